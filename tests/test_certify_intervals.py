"""Interval bound propagation: every layer rule is sound against sampling, affine rules are exact,
the margin head is sound and tighter than subtracting interval logits, input boxes clip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqshield.certify import Interval, input_box, linear_interval, margin_interval, propagate
from deqshield.errors import InputError

DTYPE = torch.float64




def random_box(shape, seed=0, width=0.5):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(shape, generator=gen, dtype=DTYPE)
    radius = width * torch.rand(shape, generator=gen, dtype=DTYPE)
    return Interval(centre - radius, centre + radius)


def samples(box: Interval, n=300, seed=1):
    """n uniform points and n random corners of the box, shape (2n, *box.shape)."""
    gen = torch.Generator().manual_seed(seed)
    uniform = box.lower + torch.rand((n, *box.shape), generator=gen, dtype=DTYPE) * (
        box.upper - box.lower)
    corner = torch.where(torch.rand((n, *box.shape), generator=gen) < 0.5, box.lower, box.upper)
    return torch.cat([uniform, corner])


def with_random_stats(norm: nn.modules.batchnorm._BatchNorm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(c, generator=gen))
        norm.running_var.copy_(0.1 + torch.rand(c, generator=gen))
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.weight[0] = -abs(norm.weight[0]) - 0.5
        norm.bias.copy_(torch.randn(c, generator=gen))
    return norm.eval()


torch.manual_seed(0)
LAYERS = {
    "linear": (nn.Linear(6, 5), (4, 6)),
    "conv_stride2": (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 5)),
    "conv_dilated": (nn.Conv2d(2, 2, 3, padding=2, dilation=2, bias=False), (2, 2, 5, 5)),
    "batchnorm2d_negative_scale": (with_random_stats(nn.BatchNorm2d(3)), (2, 3, 4, 4)),
    "batchnorm1d": (with_random_stats(nn.BatchNorm1d(5), 1), (3, 5)),
    "relu": (nn.ReLU(), (3, 7)),
    "leaky_relu": (nn.LeakyReLU(0.1), (3, 7)),
    "tanh": (nn.Tanh(), (3, 7)),
    "sigmoid": (nn.Sigmoid(), (3, 7)),
    "avgpool": (nn.AvgPool2d(2), (2, 2, 4, 4)),
    "maxpool": (nn.MaxPool2d(2), (2, 2, 4, 4)),
    "adaptive_avgpool": (nn.AdaptiveAvgPool2d(1), (2, 2, 4, 4)),
    "flatten": (nn.Flatten(), (2, 2, 3, 3)),
    "sequential": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), with_random_stats(
        nn.BatchNorm2d(2), 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3),
        nn.Tanh()), (2, 1, 4, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_rule_is_sound_against_sampling(name):
    layer, shape = LAYERS[name]
    layer = layer.double()
    box = random_box(shape)
    out = propagate(layer, box)
    points = samples(box)
    with torch.no_grad():
        values = torch.stack([layer(p) for p in points])
    assert out.shape == values.shape[1:]
    assert (out.lower <= out.upper).all()
    assert out.violation(values).max() <= 1e-12


def test_affine_rule_is_attained_at_a_corner():
    layer = nn.Linear(6, 4).double()
    box = random_box((1, 6))
    out = linear_interval(box, layer.weight, layer.bias)
    for i in range(4):
        corner = torch.where(layer.weight[i] > 0, box.upper, box.lower)
        torch.testing.assert_close(layer(corner)[0, i], out.upper[0, i])


def test_batch_norm_in_training_mode_uses_the_centres_statistics():
    norm = nn.BatchNorm2d(3).double().train()
    x = torch.randn(4, 3, 2, 2, dtype=DTYPE)
    out = propagate(norm, Interval(x, x))
    torch.testing.assert_close(out.lower, norm(x))


def test_margin_head_is_sound_and_tighter_than_interval_logits():
    head = nn.Linear(5, 4).double()
    box = random_box((3, 5), seed=3, width=1.0)
    y = torch.tensor([0, 2, 3])
    margins = margin_interval(box, head.weight, head.bias, y)
    assert (margins.lower.gather(1, y[:, None]) == 0).all()
    assert (margins.upper.gather(1, y[:, None]) == 0).all()
    points = samples(box)
    with torch.no_grad():
        logits = head(points)
    true = logits.gather(2, y[None, :, None].expand(len(points), 3, 1)) - logits
    assert margins.violation(true).max() <= 1e-12
    logit_box = linear_interval(box, head.weight, head.bias)
    naive_lower = logit_box.lower.gather(1, y[:, None]) - logit_box.upper
    others = torch.ones_like(naive_lower, dtype=torch.bool).scatter(1, y[:, None], False)
    assert (margins.lower >= naive_lower - 1e-12)[others].all()
    assert (margins.lower > naive_lower + 1e-6)[others].any()


def test_margin_head_rejects_bad_labels():
    head = nn.Linear(5, 4).double()
    box = random_box((2, 5))
    with pytest.raises(InputError):
        margin_interval(box, head.weight, head.bias, torch.tensor([0, 4]))
    with pytest.raises(InputError):
        margin_interval(box, head.weight, head.bias, torch.tensor([0.0, 1.0]))


def test_input_box_clips_soundly():
    x = torch.tensor([[0.0, 0.02, 0.5, 0.99, 1.0]], dtype=DTYPE)
    box = input_box(x, 0.05)
    assert (box.lower >= 0).all() and (box.upper <= 1).all()
    assert box.violation(x).max() == 0
    torch.testing.assert_close(box.lower, torch.tensor([[0.0, 0.0, 0.45, 0.94, 0.95]], dtype=DTYPE))
    unclipped = input_box(x, 0.05, clip=None)
    torch.testing.assert_close(unclipped.radius, torch.full_like(x, 0.05))


@pytest.mark.parametrize("eps, x, clip", [(-0.1, [[0.5]], (0, 1)), (float("nan"), [[0.5]], (0, 1)),
                                          (0.1, [[1.5]], (0, 1)), (0.1, [[0.5]], (1, 0)),
                                          (0.1, [[float("nan")]], None)])
def test_input_box_rejects_bad_input(eps, x, clip):
    with pytest.raises(InputError):
        input_box(torch.tensor(x), eps, clip)


def test_unsupported_layers_and_bad_intervals_are_rejected():
    box = random_box((2, 3))
    for layer in (nn.GELU(), nn.LeakyReLU(-0.5), nn.Dropout(0.5).train()):
        with pytest.raises(InputError):
            propagate(layer, box)
    with pytest.raises(InputError):
        Interval(torch.zeros(2), torch.zeros(3))


def test_trace_records_preactivation_boxes():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()).double()
    trace: list[Interval] = []
    propagate(model, random_box((2, 3)), trace)
    assert [t.shape for t in trace] == [torch.Size([2, 4]), torch.Size([2, 2])]
