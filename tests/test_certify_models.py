"""CerDEQ and CNN-7 end to end: the certified margins bound what the model actually computes
(sampled inputs, box corners, PGD), layer by layer; collapse at eps = 0; nesting; abstention;
contraction of every parametrisation; gradients; the certify() contract."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from deqshield.certify import (CNN7, AdjointSolve, CerDEQ, CerDEQSettings, CNN7Settings,
                               EquilibriumSettings, certify, cnn7_matching_budget,
                               cnn7_parameter_count, input_box)
from deqshield.errors import InputError
from deqshield.gradients import Phantom
from deqshield.solvers import Anderson

DTYPE = torch.float64


PRECISE = EquilibriumSettings(
    solver=Anderson(max_iter=100, tol=1e-12, stop_mode="abs"), residual_tolerance=1e-9,
    bounds=AdjointSolve(solver=Anderson(max_iter=200, tol=1e-13, stop_mode="abs")))
LOOSE = EquilibriumSettings(
    solver=Anderson(max_iter=6, tol=1e-3, stop_mode="abs"), residual_tolerance=1e-2,
    gradient=Phantom(steps=1))
TINY = CerDEQSettings(input_shape=(1, 6, 6), num_classes=3, conv_channels=(3,), linear_width=8,
                      equilibrium=PRECISE)


def randomize_batch_norms(model: nn.Module, seed=0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.weight.copy_(1 + 0.5 * torch.randn(c, generator=gen))
                module.weight[0] = -0.7
                module.bias.copy_(0.5 + 0.3 * torch.randn(c, generator=gen))
    return model


def tiny_cerdeq(config=TINY, seed=0):
    torch.manual_seed(seed)
    return randomize_batch_norms(CerDEQ(config), seed).to(DTYPE).eval()


def images(batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand((batch, 1, 6, 6), generator=gen, dtype=DTYPE)


def box_samples(x, eps, n=64, seed=2):
    """n uniform points and n random corners of each sample's clipped box: (n', B, ...)."""
    box = input_box(x, eps)
    gen = torch.Generator().manual_seed(seed)
    uniform = box.lower + torch.rand((n, *x.shape), generator=gen, dtype=DTYPE) * (
        box.upper - box.lower)
    corner = torch.where(torch.rand((n, *x.shape), generator=gen) < 0.5, box.lower, box.upper)
    return torch.cat([uniform, corner])


def margins_of(logits, y):
    return logits.gather(1, y[:, None]) - logits


def pgd_margin_attack(model, x, y, eps, steps=10):
    """For every class j, PGD minimising logit_y - logit_j over the clipped box, all classes in
    one batch; returns the final points (K, B, ...)."""
    k, batch = model.num_classes, x.shape[0]
    box = input_box(x, eps)
    lower, upper = box.lower.repeat(k, 1, 1, 1), box.upper.repeat(k, 1, 1, 1)
    labels, wrong = y.repeat(k), torch.arange(k).repeat_interleave(batch)
    xs = x.repeat(k, 1, 1, 1)
    for _ in range(steps):
        xs.requires_grad_(True)
        logits = model(xs)
        margin = (logits.gather(1, labels[:, None])[:, 0] - logits.gather(1, wrong[:, None])[:, 0])
        grad, = torch.autograd.grad(margin.sum(), xs)
        with torch.no_grad():
            xs = torch.minimum(torch.maximum(xs - eps / 4 * grad.sign(), lower), upper)
    return xs.detach().view(k, *x.shape)


def check_margins(model, points, y, lower, atol):
    """Every answering output at ``points`` (N, B, ...) has margins >= ``lower``; most answer."""
    with torch.no_grad():
        evaluation = model.evaluate(points.flatten(0, 1))
    assert evaluation.valid.float().mean() > 0.9
    margins = margins_of(evaluation.logits, y.repeat(len(points)))
    gap = (lower.repeat(len(points), 1) - margins)[evaluation.valid]
    assert gap.max() <= atol


@pytest.mark.parametrize("settings", [PRECISE, LOOSE], ids=["precise", "loose"])
@pytest.mark.parametrize("eps", [0.0, 0.02, 0.1])
def test_margins_bound_the_models_outputs(settings, eps):
    model = tiny_cerdeq(dataclasses.replace(TINY, equilibrium=settings))
    x, y = images(), torch.tensor([0, 2])
    with torch.no_grad():
        lower = model.margin_bounds(input_box(x, eps), y).lower
    check_margins(model, box_samples(x, eps), y, lower, 1e-10)
    check_margins(model, pgd_margin_attack(model, x, y, eps), y, lower, 1e-10)


def test_the_residual_allowance_is_what_covers_a_loose_solver():
    model = tiny_cerdeq(dataclasses.replace(TINY, equilibrium=LOOSE))
    x, y = images(), torch.tensor([0, 2])
    with torch.no_grad():
        evaluation = model.evaluate(x)
        widened = model.margin_bounds(input_box(x, 0.0), y).lower
        for layer in model.layers:
            layer.settings = PRECISE
        exact = model.margin_bounds(input_box(x, 0.0), y).lower
    margins = margins_of(evaluation.logits, y)
    assert evaluation.valid.all() and evaluation.residuals.max() > 1e-6
    assert (exact - margins).max() > 1e-6
    assert (widened - margins).max() <= 1e-10


def test_each_layer_box_contains_the_states_the_model_returns():
    model = tiny_cerdeq(seed=3)
    x, eps = images(seed=4), 0.1
    points = box_samples(x, eps, n=32).flatten(0, 1)
    box = input_box(x, eps)
    states = points
    with torch.no_grad():
        for layer in model.layers:
            box = layer.interval(box)
            states, residual = layer(states)
            assert (residual <= PRECISE.residual_tolerance).all()
            inside = box.violation(states.view(-1, *box.shape)).max()
            assert inside <= 1e-10


def test_margins_collapse_at_eps_zero_and_nest():
    model = tiny_cerdeq(seed=5)
    x, y = images(seed=6), torch.tensor([1, 0])
    with torch.no_grad():
        actual = margins_of(model(x), y)
        bounds = [model.margin_bounds(input_box(x, eps), y) for eps in (0.0, 0.01, 0.05)]
    torch.testing.assert_close(bounds[0].lower, actual, atol=1e-7, rtol=0)
    torch.testing.assert_close(bounds[0].upper, actual, atol=1e-7, rtol=0)
    for inner, outer in zip(bounds, bounds[1:]):
        assert (outer.lower <= inner.lower + 1e-9).all()
        assert (outer.upper >= inner.upper - 1e-9).all()


def test_certify_contract():
    model = tiny_cerdeq(seed=7)
    x = images(batch=4, seed=8)
    with torch.no_grad():
        y = model(x).argmax(1)
    certified, margins = certify(model, x, y, 0.0)
    assert certified.all() and margins.shape == (4, 3)
    certified_large, _ = certify(model, x, y, 0.5)
    assert not certified_large.any()
    model.layers[0].extractor[1].train()
    with pytest.raises(InputError):
        certify(model, x, y, 0.01)


def test_model_abstains_when_the_residual_tolerance_is_not_met():
    strict = EquilibriumSettings(solver=Anderson(max_iter=3, tol=1e-12, stop_mode="abs"),
                                 residual_tolerance=1e-14)
    model = tiny_cerdeq(dataclasses.replace(TINY, equilibrium=strict), seed=9)
    x = images(seed=10)
    with torch.no_grad():
        y = model(x).argmax(1)
        assert (model.predict(x) == -1).all()
    certified, _ = certify(model, x, y, 0.0)
    assert not certified.any()


@pytest.mark.parametrize("parametrization", ["orthogonal", "weight_norm", "spectral_norm"])
def test_every_parametrization_contracts(parametrization):
    config = CerDEQSettings(input_shape=(3, 8, 8), conv_channels=(4, 6), linear_width=10,
                            parametrization=parametrization, contraction_factor=0.9)
    model = CerDEQ(config)
    with torch.no_grad():
        for layer in model.layers:
            layer.fusion.direction.normal_(0, 3)
            layer.fusion.scale_logit.fill_(20.0)
    assert all(lipschitz <= 0.9 + 1e-6 for lipschitz in model.contractions())


def test_gradients_in_eval_mode_and_same_value_with_and_without_autograd():
    model = tiny_cerdeq(seed=11)
    x = images(seed=12).requires_grad_()
    logits = model(x)
    grad, = torch.autograd.grad(logits[:, 0].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits.detach(), atol=0, rtol=0)


def test_bad_input_shape_is_rejected():
    model = tiny_cerdeq()
    with pytest.raises(InputError):
        model(torch.rand(2, 1, 5, 5, dtype=DTYPE))


def test_cnn7_margins_are_sound_and_budget_matching_works():
    torch.manual_seed(13)
    config = CNN7Settings(input_shape=(1, 6, 6), num_classes=3, width=2, linear_width=8)
    model = randomize_batch_norms(CNN7(config), 13).to(DTYPE).eval()
    assert cnn7_parameter_count(config) == sum(p.numel() for p in model.parameters())
    x, y, eps = images(seed=14), torch.tensor([2, 1]), 0.05
    with torch.no_grad():
        lower = model.margin_bounds(input_box(x, eps), y).lower
    check_margins(model, box_samples(x, eps), y, lower, 1e-12)
    check_margins(model, pgd_margin_attack(model, x, y, eps), y, lower, 1e-12)
    budget = sum(p.numel() for p in CerDEQ(CerDEQSettings()).parameters())
    matched = cnn7_matching_budget(budget)
    nearby = [CNN7Settings(width=w, linear_width=8 * w) for w in (matched.width - 1,
                                                                  matched.width + 1)]
    error = abs(cnn7_parameter_count(matched) - budget)
    assert all(error <= abs(cnn7_parameter_count(c) - budget) for c in nearby)
