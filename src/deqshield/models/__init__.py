"""Models: DEQ classifiers (fully connected, single-scale conv, multiscale) and explicit
baselines. Each model has a settings class with ``build(input_shape, num_classes)``; the
``ModelSpec`` union is the ``model`` section of a config file. The certified models (CerDEQ and
its CNN-7 baseline) are specified by their own configs from :mod:`deqshield.certify`."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.certify.baseline import CNN7Config
from deqshield.certify.models import CerDEQConfig
from deqshield.models.base import Classifier, DEQClassifier, check_input
from deqshield.models.conv_deq import ConvDEQ
from deqshield.models.dense_deq import DenseDEQ
from deqshield.models.mdeq import MDEQ, MDEQ_LARGE, MDEQ_XL
from deqshield.models.resnet import ResNet18
from deqshield.models.small_cnn import SmallCNN

ModelSpec = Annotated[Union[DenseDEQ, ConvDEQ, MDEQ, SmallCNN, ResNet18, CerDEQConfig, CNN7Config],
                      Field(discriminator="name")]

__all__ = ["Classifier", "ConvDEQ", "DEQClassifier", "DenseDEQ", "MDEQ", "MDEQ_LARGE", "MDEQ_XL",
           "ModelSpec", "ResNet18", "SmallCNN", "check_input"]
