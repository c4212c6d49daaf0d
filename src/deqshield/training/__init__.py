"""Training: objectives (standard, PGD-AT, TRADES, random intermediate states), the loop with
checkpoints/resume/selection, and ``train`` (in :mod:`deqshield.training.run`) for configs."""

from deqshield.training.evaluation import accuracy, robust_accuracy
from deqshield.training.fit import fit
from deqshield.training.loop import EpochRecord, TrainHistory, Trainer, TrainingDivergedError
from deqshield.training.objectives import (PGDAT, TRADES, ObjectiveSpec, Standard, StepOutput,
                                           StepRandomness)

__all__ = ["PGDAT", "TRADES", "EpochRecord", "ObjectiveSpec", "Standard", "StepOutput",
           "StepRandomness", "TrainHistory", "Trainer", "TrainingDivergedError", "accuracy",
           "fit", "robust_accuracy"]
