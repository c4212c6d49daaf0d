"""The explicit CNN-7-BN baseline of Fast-IBP / CerDEQ Tables 1 and 3, scaled by a config.

With base width w and linear width d (CIFAR: w = 64, d = 512)::

    conv(w) BN ReLU, conv(w) BN ReLU, conv(2w, stride 2) BN ReLU, conv(2w) BN ReLU,
    conv(2w) BN ReLU, flatten, linear(d) BN ReLU, linear(K)

with 3 x 3 convolutions (padding 1) and the Fast-IBP initialisation. The model always answers;
its margin bounds are plain IBP with the margin matrix folded into the last layer.
:func:`cnn7_matching_budget` picks the width whose parameter count is closest to a given
budget (e.g. a CerDEQ's), keeping d = 8 w as in the original.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.certify.initialization import ibp_init_model_
from deqshield.certify.intervals import Interval, margin_interval, propagate
from deqshield.certify.models import (CertifiableClassifier, CertifiableOutput, Positive,
                                      check_data_matches)
from deqshield.errors import InputError
from deqshield.settings import component


@component
class CNN7Settings:
    """Size of a CNN-7-BN: ``width`` (w) and ``linear_width`` (d); also the ``model`` section
    ``name: cnn7`` of an experiment config (:meth:`build`)."""

    name: Literal["cnn7"] = "cnn7"
    input_shape: tuple[Positive, Positive, Positive] = (3, 32, 32)
    num_classes: Annotated[int, Field(ge=2)] = 10
    width: Positive = 64
    linear_width: Positive = 512

    def build(self, input_shape: Sequence[int], num_classes: int) -> "CNN7":
        """The CNN-7 of this config, for data that must match its shape and classes."""
        check_data_matches(self, input_shape, num_classes)
        return CNN7(self)


def _conv_plan(config: CNN7Settings) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of the five convolutions."""
    w = config.width
    return [(config.input_shape[0], w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1),
            (2 * w, 2 * w, 1)]


def _flat_features(config: CNN7Settings) -> int:
    _, height, width = config.input_shape
    return 2 * config.width * ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)


def cnn7_parameter_count(config: CNN7Settings) -> int:
    """Learnable parameters (weights, biases, batch-norm affine) of the CNN-7 of ``config``."""
    count = sum(9 * cin * cout + 3 * cout for cin, cout, _ in _conv_plan(config))
    count += (_flat_features(config) + 3) * config.linear_width
    return count + (config.linear_width + 1) * config.num_classes


def cnn7_matching_budget(num_parameters: int, input_shape: tuple[int, int, int] = (3, 32, 32),
                         num_classes: int = 10) -> CNN7Settings:
    """The CNN-7 (d = 8 w) whose parameter count is closest to ``num_parameters``."""
    if num_parameters < 1:
        raise InputError(f"num_parameters must be positive, got {num_parameters}")
    best: Optional[CNN7Settings] = None
    width = 1
    while True:
        config = CNN7Settings(input_shape=input_shape, num_classes=num_classes, width=width,
                              linear_width=8 * width)
        if best is None or (abs(cnn7_parameter_count(config) - num_parameters)
                            < abs(cnn7_parameter_count(best) - num_parameters)):
            best = config
        if cnn7_parameter_count(config) >= num_parameters:
            return best
        width += 1


class CNN7(CertifiableClassifier):
    """CNN-7-BN sized by :class:`CNN7Settings`."""

    def __init__(self, config: CNN7Settings = CNN7Settings()):
        super().__init__(config)
        layers: list[nn.Module] = []
        for cin, cout, stride in _conv_plan(config):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout),
                       nn.ReLU()]
        layers += [nn.Flatten(), nn.Linear(_flat_features(config), config.linear_width),
                   nn.BatchNorm1d(config.linear_width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(config.linear_width, config.num_classes)
        ibp_init_model_(self)

    def evaluate(self, x: Tensor) -> CertifiableOutput:
        self.check_input(x)
        logits = self.head(self.features(x))
        batch = x.shape[0]
        return CertifiableOutput(logits, logits.new_zeros(batch, 0),
                                 torch.ones(batch, dtype=torch.bool, device=x.device))

    def margin_bounds(self, box: Interval, y: Tensor,
                      trace: Optional[list[Interval]] = None) -> Interval:
        self.check_input(box.lower)
        features = propagate(self.features, box, trace)
        return margin_interval(features, self.head.weight, self.head.bias, y)
