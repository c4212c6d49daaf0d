"""Training: objectives and the loop."""

from deqshield.training.loop import TrainHistory, TrainingDivergedError, accuracy, fit
from deqshield.training.objectives import ObjectiveSpec, Standard, StepOutput

__all__ = ["ObjectiveSpec", "Standard", "StepOutput", "TrainHistory", "TrainingDivergedError",
           "accuracy", "fit"]
