"""The one place where user-supplied values are checked.

Tensors (inputs, solver states, labels, adversarial examples), numbers (radii, counts, input
bounds) and devices are validated here and nowhere else; models, solvers, readouts, attacks,
gradient paths, the certifier and the command line call these functions, so a rule is written
once and every entry point raises the same :class:`~deqshield.errors.InputError` naming the
argument, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

import torch
from torch import Tensor

from deqshield.errors import InputError

INPUT_RANGE = (0.0, 1.0)
"""The valid input range of every deqshield data set and model (images scaled to [0, 1])."""

SEED_LIMIT = 2**32
"""Seeds lie in [0, 2^32): runs derive per-column, per-process and per-epoch seeds from them by
adding small offsets, which must stay within ``torch.Generator.manual_seed``'s 64-bit range."""

SLACK = 1e-6
"""Tolerance of range and ball checks (float rounding of projections)."""


def check_number(name: str, value: object, *, minimum: Optional[float] = None,
                 below: Optional[float] = None, integer: bool = False) -> float:
    """``value`` as a number, or :class:`InputError`: it must be finite (an int if ``integer``;
    bools are not numbers), >= ``minimum`` and < ``below`` where given."""
    kind = "an integer" if integer else "a finite number"
    allowed = " and ".join(part for part in (
        f">= {minimum:g}" if minimum is not None else "",
        f"< {below if isinstance(below, int) else format(below, 'g')}" if below is not None
        else "") if part)
    wanted = f"{kind}{' ' + allowed if allowed else ''}"
    number_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise InputError(f"{name} must be {wanted}, got {value!r}")
    if (minimum is not None and value < minimum) or (below is not None and value >= below):
        raise InputError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_bounds(bounds: Sequence[float], name: str = "bounds") -> tuple[float, float]:
    """Input bounds (lo, hi): two finite numbers with lo < hi."""
    if len(bounds) != 2:
        raise InputError(f"{name} must be a pair (lo, hi), got {tuple(bounds)!r}")
    lo = check_number(f"{name}[0]", bounds[0])
    hi = check_number(f"{name}[1]", bounds[1])
    if not lo < hi:
        raise InputError(f"{name} must satisfy lo < hi, got {tuple(bounds)!r}")
    return float(lo), float(hi)


def check_eps(eps: float, bounds: Sequence[float] = INPUT_RANGE, norm: str = "linf",
              name: str = "eps") -> float:
    """A perturbation radius: finite and >= 0; an l_inf radius must also be smaller than the
    width of the input range (a radius that covers the whole range makes every input
    reachable, so robustness is 0 by construction)."""
    lo, hi = check_bounds(bounds)
    return check_number(name, eps, minimum=0,
                        below=hi - lo if norm == "linf" else None)


def check_index(name: str, index: object, max_iter: int, first: int = 1) -> int:
    """A state index n of the trajectory z_0..z_max_iter of a solver with ``max_iter`` updates,
    n >= ``first`` (1 by default: z_0 carries no information about the input)."""
    if isinstance(index, bool) or not isinstance(index, int) or not first <= index <= max_iter:
        raise InputError(f"{name} must be an integer between {first} and {max_iter} (the "
                         f"solver's max_iter={max_iter} gives states z_0..z_{max_iter}), "
                         f"got {index!r}")
    return index


def all_finite(x: Tensor) -> bool:
    """Whether no entry of ``x`` is NaN or +-Inf, in one reduction pass: NaN and +-Inf
    propagate into min/max (``isfinite(x).all()`` makes three full-size passes and a bool
    tensor, ~20x slower on a CPU)."""
    return bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())


def check_batch(x: object, what: str = "input") -> Tensor:
    """A non-empty, finite, floating-point batch (batch, ...)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{what} must have a floating-point dtype, got {x.dtype} "
                         "(convert images with x.float() / 255)")
    if x.dim() < 2:
        raise InputError(f"{what} must have shape (batch, ...), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.numel() == 0:
        raise InputError(f"{what} is an empty batch (shape {tuple(x.shape)})")
    if not all_finite(x):
        raise InputError(f"{what} contains NaN or Inf")
    return x


def check_input(x: object, input_shape: Sequence[int],
                dtype: Optional[torch.dtype] = None) -> Tensor:
    """A model input: a finite float batch of ``input_shape`` (and of the model's ``dtype``)."""
    if not isinstance(x, Tensor):
        raise InputError(f"input must be a torch.Tensor, got {type(x).__name__}")
    expected = tuple(input_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise InputError(f"input must have shape (batch, {', '.join(map(str, expected))}), "
                         f"got {tuple(x.shape)}")
    check_batch(x)
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"input has dtype {x.dtype} but the model's weights are {dtype}; "
                         f"convert with x.to({dtype})")
    return x


_UNBOUNDED: ContextVar[bool] = ContextVar("unbounded_inputs", default=False)


@contextmanager
def unbounded_inputs() -> Iterator[None]:
    """Inside the block, model inputs may leave the valid range: randomized smoothing evaluates
    its base classifier at x + Gaussian noise, which is not clipped (Cohen et al. 2019)."""
    token = _UNBOUNDED.set(True)
    try:
        yield
    finally:
        _UNBOUNDED.reset(token)


def check_range(x: Tensor, bounds: Sequence[float] = INPUT_RANGE, what: str = "input") -> Tensor:
    """Every value of ``x`` lies in [lo, hi] (e.g. images scaled to [0, 1], not [0, 255]),
    unless inside :func:`unbounded_inputs`."""
    if _UNBOUNDED.get():
        return x
    lo, hi = check_bounds(bounds)
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if low < lo - SLACK or high > hi + SLACK:
        raise InputError(f"{what} values must lie in the valid input range [{lo:g}, {hi:g}], "
                         f"got values in [{low:g}, {high:g}] (scale images to [{lo:g}, {hi:g}])")
    return x


def check_labels(y: object, batch: int, num_classes: int) -> Tensor:
    """Class labels: an integer (batch,) tensor with values in [0, num_classes)."""
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32):
        got = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise InputError(f"labels must be an int64 (or int32) tensor, got {got}")
    if tuple(y.shape) != (batch,):
        raise InputError(f"labels must have shape ({batch},), one per input, "
                         f"got {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


def check_perturbation(x_adv: Tensor, x: Tensor, eps: float, norm: str,
                       bounds: tuple[float, float], slack: float = SLACK) -> None:
    """Raise (an internal error: an attack bug) if any example leaves the eps-ball or the
    valid range."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    if (size > eps + slack).any():
        raise RuntimeError(f"attack left the {norm} ball: max size {float(size.max())} > {eps}")
    if (x_adv < bounds[0] - slack).any() or (x_adv > bounds[1] + slack).any():
        raise RuntimeError(f"attack left the valid input range {bounds}")


def check_device(device: str) -> torch.device:
    """A torch device this machine has: cpu, cuda, cuda:N (N < the number of GPUs) or mps."""
    allowed = "cpu, cuda, cuda:N or mps"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be one of {allowed}, got {device!r}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: CUDA is not available on this machine "
                             "(use cpu)")
        if chosen.index is not None and chosen.index >= count:
            raise InputError(f"device {device!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r}: MPS is not available on this machine")
    elif chosen.type != "cpu":
        raise InputError(f"device must be one of {allowed}, got {device!r}")
    return chosen
