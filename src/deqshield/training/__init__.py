"""Training: objectives (:mod:`.objectives`: standard, PGD-AT, TRADES, certified;
:mod:`.fast_at`, :mod:`.noise`), what a loss reads (:mod:`.forward`, random intermediate states)
and attacks (:mod:`.adversary`), the loop with checkpoints/resume/selection (:mod:`.loop`, its
dev-set metrics in :mod:`.accuracy`), and ``train`` (in :mod:`deqshield.training.run`) for
configs."""

from deqshield.training.accuracy import accuracy, robust_accuracy
from deqshield.training.fit import fit
from deqshield.training.loop import EpochRecord, TrainHistory, Trainer, TrainingDivergedError
from deqshield.training.fast_at import FastAT, FreeAT
from deqshield.training.objective_spec import ObjectiveSpec
from deqshield.training.forward import StepOutput, StepRandomness
from deqshield.training.objectives import PGDAT, TRADES, Standard

__all__ = ["PGDAT", "TRADES", "EpochRecord", "FastAT", "FreeAT", "ObjectiveSpec", "Standard",
           "StepOutput",
           "StepRandomness", "TrainHistory", "Trainer", "TrainingDivergedError", "accuracy",
           "fit", "robust_accuracy"]
