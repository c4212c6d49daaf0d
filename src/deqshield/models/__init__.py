"""Models: DEQ classifiers (fully connected, single-scale conv, multiscale) and explicit
baselines. Each model has a settings class (``...Settings``) whose ``build(input_shape,
num_classes)`` returns the module; the ``ModelSpec`` union is the ``model`` section of a config
file. The certified models (CerDEQ and its CNN-7 baseline) have their settings in
:mod:`deqshield.certify`."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.certify.baseline import CNN7Settings
from deqshield.certify.models import CerDEQSettings
from deqshield.models.base import Classifier, DEQClassifier, check_input
from deqshield.models.conv_deq import ConvDEQSettings
from deqshield.models.dense_deq import DenseDEQSettings
from deqshield.models.mdeq import MDEQSettings, MDEQ_LARGE, MDEQ_XL
from deqshield.models.resnet import ResNet18, ResNet18Settings
from deqshield.models.small_cnn import SmallCNN, SmallCNNSettings

ModelSpec = Annotated[Union[DenseDEQSettings, ConvDEQSettings, MDEQSettings, SmallCNNSettings,
                            ResNet18Settings, CerDEQSettings, CNN7Settings],
                      Field(discriminator="name")]

__all__ = ["Classifier", "ConvDEQSettings", "DEQClassifier", "DenseDEQSettings", "MDEQSettings",
           "MDEQ_LARGE", "MDEQ_XL", "ModelSpec", "ResNet18", "ResNet18Settings", "SmallCNN",
           "SmallCNNSettings", "check_input"]
