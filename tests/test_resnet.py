"""The explicit ResNet-18 baseline."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from deqshield.errors import InputError
from deqshield.models.resnet import ResNet18Settings


def test_thin_network_forward_shape_and_input_gradient():
    torch.manual_seed(0)
    model = ResNet18Settings(width=0.125).build((3, 16, 16), 10).eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([2, 5])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_standard_width_has_resnet18_size():
    model = ResNet18Settings().build((3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_input_and_settings_are_checked():
    model = ResNet18Settings(width=0.125).build((3, 16, 16), 10)
    with pytest.raises(InputError):
        model(torch.rand(2, 3, 8, 8))
    with pytest.raises(InputError):
        ResNet18Settings().build((16,), 10)
    with pytest.raises(ValidationError):
        ResNet18Settings(width=0)
