"""The certified objective: eps schedule, regularisers, IBP initialisations, and a few steps of
certified training that must lower the certified loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deqshield.certify import (CNN7, CerDEQ, CerDEQSettings, CertifiedObjective, CNN7Settings,
                               EpsilonSchedule, Interval, certified_loss, deq_extractor_init_,
                               ibp_init_, relu_balance_regularizer, tightness_regularizer)
from deqshield.errors import InputError




def test_schedule_is_zero_then_quartic_then_linear_then_flat():
    schedule = EpsilonSchedule(target=0.1, length=400, start=50)
    assert schedule(0) == schedule(50) == 0.0
    assert schedule(450) == schedule(1000) == 0.1
    values = [schedule(s) for s in range(0, 501)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # quartic over the first quarter of the ramp (t = step - start <= 100)
    assert math.isclose(schedule(50 + 40) / schedule(50 + 20), 16.0, rel_tol=1e-12)
    # value and slope continuous where the polynomial hands over to the line (t = 100)
    left, right = schedule(150) - schedule(149), schedule(151) - schedule(150)
    assert math.isclose(left, right, rel_tol=0.05)
    assert math.isclose(schedule(300) - schedule(299), right, rel_tol=1e-9)
    assert math.isclose(schedule(449), 0.1 - right, rel_tol=1e-9)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError):
        EpsilonSchedule(target=0.1, length=0)
    with pytest.raises(ValueError):
        EpsilonSchedule(target=0.1, length=10, unknown=1)


def test_tightness_regularizer():
    box = Interval(torch.zeros(4, 3), torch.ones(4, 3))
    tight = [Interval(-torch.ones(4, 5), torch.ones(4, 5))]
    loose = [Interval(-100 * torch.ones(4, 5), 100 * torch.ones(4, 5))]
    assert tightness_regularizer(box, tight, 0.5) == 0
    assert math.isclose(float(tightness_regularizer(box, loose, 0.5)), 0.99, rel_tol=1e-6)


def test_relu_balance_regularizer():
    centre = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    balanced = Interval(centre - 0.1, centre + 0.1)
    assert relu_balance_regularizer([balanced], 0.5) == 0
    dead = Interval(-centre.abs() - 0.5, -centre.abs() + 0.1)
    assert relu_balance_regularizer([dead], 0.5) == 2.0
    alive = Interval(centre.abs() - 0.5, centre.abs() + 0.1)
    assert relu_balance_regularizer([alive], 0.5) == 0
    assert relu_balance_regularizer([dead, alive], 0.5) == 1.0
    lopsided = Interval(torch.tensor([[4.0, -1.0, 3.0, 5.0]]) - 0.1,
                        torch.tensor([[4.0, -1.0, 3.0, 5.0]]) + 0.1)
    assert relu_balance_regularizer([lopsided], 0.5) > 0


@pytest.mark.parametrize("init, gain", [(ibp_init_, math.sqrt(2 * math.pi)),
                                        (deq_extractor_init_, math.sqrt(math.pi / 2))])
def test_initialisations(init, gain):
    torch.manual_seed(0)
    for layer, fan_in in [(nn.Linear(400, 300), 400), (nn.Conv2d(16, 64, 5), 400)]:
        init(layer)
        assert math.isclose(layer.weight.std().item(), gain / fan_in, rel_tol=0.05)
        assert (layer.bias == 0).all()


def synthetic_batch(n=32, seed=0):
    """Two classes: the bright half of a 1 x 6 x 6 image is the left or the right one."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.rand((n, 1, 6, 6), generator=gen)
    x[y == 0, :, :, :3] += 0.6
    x[y == 1, :, :, 3:] += 0.6
    return x, y


def test_loss_weights_and_statistics():
    torch.manual_seed(0)
    model = CerDEQ(CerDEQSettings(input_shape=(1, 6, 6), num_classes=2, conv_channels=(3,),
                                  linear_width=8)).eval()
    x, y = synthetic_batch(8)
    settings = CertifiedObjective(natural_weight=0.25, regularizer_weight=0.5)
    clean, stats0 = certified_loss(model, x, y, 0.0, 0.1, settings)
    assert math.isclose(stats0["loss"], stats0["natural_loss"], rel_tol=1e-6)
    _, mid = certified_loss(model, x, y, 0.05, 0.1, settings)
    assert mid["regularizer_weight"] == 0.25 and mid["robust_loss"] >= mid["natural_loss"]
    _, end = certified_loss(model, x, y, 0.1, 0.1, settings)
    assert end["regularizer_weight"] == 0.0
    assert math.isclose(end["loss"], (end["robust_loss"] + 0.25 * end["natural_loss"]) / 1.25,
                        rel_tol=1e-6)
    with pytest.raises(InputError):
        certified_loss(model, x, y, 0.2, 0.1)


@pytest.mark.parametrize("kind", ["cerdeq", "cnn7"])
def test_a_few_certified_training_steps_lower_the_certified_loss(kind):
    torch.manual_seed(0)
    if kind == "cerdeq":
        model = CerDEQ(CerDEQSettings(input_shape=(1, 6, 6), num_classes=2, conv_channels=(4,),
                                      linear_width=16))
    else:
        model = CNN7(CNN7Settings(input_shape=(1, 6, 6), num_classes=2, width=4,
                                  linear_width=16))
    x, y = synthetic_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    eps_now, eps_target = 0.05, 0.1
    model.train()
    losses = []
    for _ in range(15):
        loss, stats = certified_loss(model, x, y, eps_now, eps_target)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(stats["robust_loss"])
    assert losses[-1] < 0.7 * losses[0]
