"""Models: DEQ classifiers (fully connected, single-scale conv, multiscale) and explicit
baselines. Each model has a settings class with ``build(input_shape, num_classes)``; the
``ModelSpec`` union is the ``model`` section of a config file."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.models.base import Classifier, DEQClassifier, check_input
from deqshield.models.conv_deq import ConvDEQ
from deqshield.models.dense_deq import DenseDEQ
from deqshield.models.small_cnn import SmallCNN

ModelSpec = Annotated[Union[DenseDEQ, ConvDEQ, SmallCNN], Field(discriminator="name")]

__all__ = ["Classifier", "ConvDEQ", "DEQClassifier", "DenseDEQ", "ModelSpec", "SmallCNN",
           "check_input"]
