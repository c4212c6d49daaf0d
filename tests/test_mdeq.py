"""The multiscale DEQ classifier: packing, trajectories, gradients, dropout, preset sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from deqshield.errors import InputError
from deqshield.gradients import Phantom
from deqshield.models import DEQClassifier
from deqshield.models.mdeq import MDEQSettings, MDEQ_LARGE, MDEQ_XL
from deqshield.models.mdeq_blocks import StatePacker
from deqshield.solvers import Broyden, Picard

TINY = MDEQSettings(channels=(4, 8, 8), head_channels=(2, 2, 4), final_channels=8, expansion=2,
                    groups=2, dropout=0.5, solver=Broyden(max_iter=4, tol=1e-3))
SHAPE = (3, 16, 16)
STATE_SIZE = 4 * 16 * 16 + 8 * 8 * 8 + 8 * 4 * 4


def tiny_model(seed: int = 0) -> DEQClassifier:
    torch.manual_seed(seed)
    return TINY.build(SHAPE, 10)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))


def make_contractive(model: DEQClassifier, gain: float = 0.05) -> None:
    """Shrink the gains of the group norms that feed the fusion sum and give them random
    offsets: the fused maps are then dominated by z-independent offsets, so f is a
    contraction in z while still depending on z and on the dropout mask."""
    cell = model.cell
    norms = [block.out_norm for block in cell.blocks]
    norms += [m for t in cell.fusion.transfers.values() for m in t.modules()
              if isinstance(m, nn.GroupNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.fill_(gain)
            norm.bias.normal_()


def test_packer_round_trips():
    packer = StatePacker([(2, 4, 4), (3, 2, 2), (5,)])
    parts = [torch.randn(3, 2, 4, 4), torch.randn(3, 3, 2, 2), torch.randn(3, 5)]
    packed = packer.pack(parts)
    assert packed.shape == (3, packer.size) and packer.size == 32 + 12 + 5
    for original, unpacked in zip(parts, packer.unpack(packed)):
        assert torch.equal(original, unpacked)
    assert torch.equal(packer.pack(packer.unpack(packed)), packed)
    with pytest.raises(InputError):
        packer.unpack(torch.zeros(3, packer.size + 1))
    with pytest.raises(InputError):
        packer.pack(parts[::-1])


def test_forward_shape_and_packed_state():
    model = tiny_model().eval()
    x = images()
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    trajectory = model.trajectory(x)
    assert trajectory.final.shape == (2, STATE_SIZE)


@pytest.mark.parametrize(("shape", "downsample", "state_size"), [
    ((3, 15, 15), 0, 4 * 15 * 15 + 8 * 8 * 8 + 8 * 4 * 4),
    ((1, 16, 16), 1, 4 * 8 * 8 + 8 * 4 * 4 + 8 * 2 * 2),
], ids=["odd-size", "downsampling-stem"])
def test_other_resolutions(shape, downsample, state_size):
    torch.manual_seed(0)
    model = dataclasses.replace(TINY, downsample=downsample).build(shape, 10).eval()
    x = torch.rand(2, *shape)
    assert model(x).shape == (2, 10)
    assert model.trajectory(x).final.shape == (2, state_size)


def test_trajectory_is_recorded_and_every_state_is_classified():
    model = tiny_model().eval()
    trajectory = model.trajectory(images(), solver=Picard(max_iter=4, tol=0.0))
    assert len(trajectory.states) == 5
    with torch.no_grad():
        for state in trajectory.states:
            assert state.shape == (2, STATE_SIZE)
            logits = model.head(state)
            assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_input_gradient_exists_in_eval_mode():
    model = tiny_model().eval()
    x = images().requires_grad_()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_eval_mode_is_deterministic_with_dropout_configured():
    model = tiny_model().eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        masks = model.cell.injection_packer.unpack(model.inject(x))[1:]
    assert all(torch.equal(mask, torch.ones_like(mask)) for mask in masks)


def test_train_mode_draws_a_mask_per_injection_and_keeps_it_for_the_solve():
    model = tiny_model().train()
    make_contractive(model)
    x = images()
    u, other_u = model.inject(x), model.inject(x)
    with torch.no_grad():
        trajectory = model.deq.solve(u, solver=Picard(max_iter=40, tol=0.0))
        assert trajectory.final_residual.max() < 1e-4
        z = trajectory.final
        assert torch.equal(model.cell(z, u), model.cell(z, u))
        change = (model.cell(z, u) - model.cell(z, other_u)).norm(dim=1) / z.norm(dim=1)
    assert change.min() > 1e-3


def test_train_step_reaches_the_cell_parameters():
    model = tiny_model().train()
    loss = nn.functional.cross_entropy(model(images()), torch.tensor([0, 3]))
    loss.backward()
    grads = [p.grad for p in model.cell.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        MDEQSettings(channels=(4, 8), head_channels=(2,))
    with pytest.raises(ValidationError):
        MDEQSettings(dropout=1.0)
    with pytest.raises(InputError):
        TINY.build((3, 16), 10)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("settings", "exact", "paper"), [
    (MDEQ_LARGE, 11_098_278, 10e6),
    (MDEQ_XL, 48_793_898, 48e6),
], ids=["large", "xl"])
def test_preset_sizes_match_the_papers(settings, exact, paper):
    model = settings.build((3, 32, 32), 10)
    count = parameter_count(model)
    assert count == exact
    assert abs(count - paper) / paper < 0.12
    assert model.deq.solver == Broyden(max_iter=8, tol=1e-3)
    assert model.deq.gradient == Phantom(steps=5, damping=0.5)
