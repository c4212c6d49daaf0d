"""CerDEQ classifiers (CerDEQ Sec. 3-4) and the interface certification relies on.

A :class:`CertifiableClassifier` computes logits with :meth:`evaluate`, which also says per
sample whether the model answers (``valid``), and bounds its margins logit_y - logit_j over an
input box with :meth:`margin_bounds`. The contract: for every input x' in the box at which the
model answers, logit_y(x') - logit_j(x') >= margin_bounds(box, y).lower[:, j].

CerDEQ (CIFAR-10 setting of Sec. 4.1): convolutional DEQ layers that downsample (extractor =
stride-2 convolution + batch norm, fusion = k x k convolution), then a linear DEQ layer
(extractor = flatten + linear + batch norm, fusion = dense), then a linear classifier::

    z_1 = ReLU(W_1 z_1 + BN(U_1 x)),  ...,  z_L = ReLU(W_L z_L + BN(U_L flatten(z_{L-1}))),
    logits = V z_L + c.

Extractors U are initialised by Prop. 3.5 (sigma = sqrt(pi / 2) / n_u), fusion weights are
Björck-orthogonalised and scaled (or weight / spectral normalised for the Table 5 ablations).
The model answers where every layer's returned state has infinity-norm residual <= delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Protocol, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.certify.fusion import FusionWeight, Parametrization
from deqshield.certify.initialization import deq_extractor_init_
from deqshield.certify.intervals import Interval, margin_interval
from deqshield.certify.layers import CerDEQLayer, EquilibriumSettings
from deqshield.errors import ConfigError, InputError
from deqshield.settings import component
from deqshield.validation import check_input

Positive = Annotated[int, Field(gt=0)]


class SizedSettings(Protocol):
    """A certifiable model's settings: its name, input shape and number of classes."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


def check_data_matches(config: SizedSettings, input_shape: Sequence[int],
                       num_classes: int) -> None:
    """Raise :class:`ConfigError` unless the data has the configured input shape and number
    of classes (a certified model's size is part of its config, never silently replaced)."""
    if tuple(input_shape) != tuple(config.input_shape) or num_classes != config.num_classes:
        raise ConfigError(
            f"model {config.name!r} is configured for inputs {tuple(config.input_shape)} and "
            f"{config.num_classes} classes, the data has {tuple(input_shape)} and "
            f"{num_classes}: set model.input_shape and model.num_classes")


@dataclass(frozen=True)
class CertifiableOutput:
    """logits (B, K); residuals (B, number of DEQ layers), infinity norm; valid (B,): whether
    the model answers (every residual <= its layer's tolerance)."""

    logits: Tensor
    residuals: Tensor
    valid: Tensor


class CertifiableClassifier(nn.Module):
    """A classifier with an abstention flag and certified margin bounds (see module doc),
    sized by its settings ``config``."""

    def __init__(self, config: SizedSettings):
        super().__init__()
        self.config = config
        self.input_shape = tuple(config.input_shape)
        self.num_classes = config.num_classes

    def evaluate(self, x: Tensor) -> CertifiableOutput:
        raise NotImplementedError

    def margin_bounds(self, box: Interval, y: Tensor,
                      trace: Optional[list[Interval]] = None) -> Interval:
        """Bounds (B, K) on logit_y - logit_j for inputs in ``box``; pre-activation boxes of
        the hidden layers are appended to ``trace`` when it is given."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.evaluate(x).logits

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels (B,), -1 where the model abstains."""
        evaluation = self.evaluate(x)
        labels = evaluation.logits.argmax(dim=1)
        return torch.where(evaluation.valid, labels, torch.full_like(labels, -1))

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputError` unless x is a finite batch of ``input_shape`` with the
        dtype of the model's weights."""
        weight = next(self.parameters(), None)
        check_input(x, self.input_shape, None if weight is None else weight.dtype)


@component
class CerDEQSettings:
    """Size and settings of a CerDEQ; also the ``model`` section ``name: cerdeq`` of an
    experiment config (:meth:`build`).

    Args:
        input_shape: (C, H, W) of the images.
        num_classes: K.
        conv_channels: channels of the convolutional DEQ layers (each halves H and W).
        linear_width: width of the final linear DEQ layer.
        kernel_size: odd kernel size of the convolutions.
        parametrization: fusion weight normalisation ("orthogonal" is CerDEQ).
        contraction_factor: the factor < 1 of the second scaling (Prop. 3.4).
        bjorck_iterations: K of Eq. 6-7.
        channel_scale_init: initial gamma in (0, 1) (Sec. 3.5).
        equilibrium: forward / phantom-gradient / abstention / bound settings.
    """

    name: Literal["cerdeq"] = "cerdeq"
    input_shape: tuple[Positive, Positive, Positive] = (3, 32, 32)
    num_classes: Annotated[int, Field(ge=2)] = 10
    conv_channels: tuple[Positive, ...] = (64, 128)
    linear_width: Positive = 512
    kernel_size: Annotated[int, Field(ge=1)] = 3
    parametrization: Parametrization = "orthogonal"
    contraction_factor: Annotated[float, Field(gt=0, lt=1)] = 0.95
    bjorck_iterations: Annotated[int, Field(ge=0)] = 5
    channel_scale_init: Annotated[float, Field(gt=0, lt=1)] = 0.5
    equilibrium: EquilibriumSettings = EquilibriumSettings()

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0:
            raise InputError(f"kernel_size must be odd, got {self.kernel_size}")

    def build(self, input_shape: Sequence[int], num_classes: int) -> "CerDEQ":
        """The CerDEQ of this config, for data that must match its shape and classes."""
        check_data_matches(self, input_shape, num_classes)
        return CerDEQ(self)


class CerDEQ(CertifiableClassifier):
    """Stacked CerDEQ layers and a linear classifier, sized by :class:`CerDEQSettings`."""

    def __init__(self, config: CerDEQSettings = CerDEQSettings()):
        super().__init__(config)
        k = config.kernel_size
        fusion_options = dict(parametrization=config.parametrization,
                              factor=config.contraction_factor,
                              bjorck_iterations=config.bjorck_iterations,
                              scale_init=config.channel_scale_init)
        layers = []
        channels, height, width = config.input_shape
        for out in config.conv_channels:
            conv = nn.Conv2d(channels, out, k, stride=2, padding=k // 2, bias=False)
            deq_extractor_init_(conv)
            layers.append(CerDEQLayer(nn.Sequential(conv, nn.BatchNorm2d(out)),
                                      FusionWeight((out, out, k, k), **fusion_options),
                                      config.equilibrium))
            channels, height, width = out, (height - 1) // 2 + 1, (width - 1) // 2 + 1
        linear = nn.Linear(channels * height * width, config.linear_width, bias=False)
        deq_extractor_init_(linear)
        layers.append(CerDEQLayer(
            nn.Sequential(nn.Flatten(), linear, nn.BatchNorm1d(config.linear_width)),
            FusionWeight((config.linear_width, config.linear_width), **fusion_options),
            config.equilibrium))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(config.linear_width, config.num_classes)

    def evaluate(self, x: Tensor) -> CertifiableOutput:
        self.check_input(x)
        residuals = []
        z = x
        for layer in self.layers:
            z, residual = layer(z)
            residuals.append(residual)
        stacked = torch.stack(residuals, dim=1)
        valid = (stacked <= self.config.equilibrium.residual_tolerance).all(dim=1)
        return CertifiableOutput(self.head(z), stacked, valid)

    def margin_bounds(self, box: Interval, y: Tensor,
                      trace: Optional[list[Interval]] = None) -> Interval:
        self.check_input(box.lower)
        for layer in self.layers:
            box = layer.interval(box, trace)
        return margin_interval(box, self.head.weight, self.head.bias, y)

    def contractions(self) -> list[float]:
        """L = ||W||_inf of every DEQ layer."""
        return [layer.contraction() for layer in self.layers]
