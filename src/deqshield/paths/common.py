"""Shared machinery of the trajectory gradient paths (Sec. 4-5 of closer-look-neurips22).

Input link. Every trajectory path writes its estimate as

    d(sum_b loss_b)/dx = (du/dx)^T g_u,        u = inject(x),

where g_u is a gradient w.r.t. the input injection collected along *one* forward solve: at a
chosen state the cell is re-evaluated as f(z_n, u) with u an autograd leaf, so
(df(z_n; x)/dx)^T a = (du/dx)^T (df(z_n, u)/du)^T a. The injection is differentiated once at the
end and nothing of the trajectory is kept, so the memory does not grow with the solver steps.

State selection. A path reads the states z_i for a tuple of indices i in 0..N (N the solver's
``max_iter``; z_0 the initial state, z_n the state after n updates) and returns the *mean* of
their per-state gradients (a single index is the mean of one). As in the trajectory readouts, a
solve that stops at T < N (every sample met the tolerance) has frozen states, z_i = z_T for
i > T, so an index beyond T reads the last state the solver produced.
"""

from __future__ import annotations

from typing import Callable, Generic, Optional, Sequence, TypeVar

import torch
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.paths.base import LossFn
from deqshield.solvers import Broyden
from deqshield.validation import check_index

P = TypeVar("P")


def as_deq(model: nn.Module, path: str) -> DEQClassifier:
    """The model as a :class:`DEQClassifier`, or a clear error (trajectory paths need one)."""
    if not isinstance(model, DEQClassifier):
        raise InputError(f"the {path} path needs a DEQClassifier (it reads the solver's states), "
                         f"got {type(model).__name__}; use FinalState for explicit networks")
    return model


def resolve_indices(indices: Optional[Sequence[int]], max_iter: int,
                    path: str) -> tuple[int, ...]:
    """The selected state indices: ``None`` means every state z_1..z_N (z_0 = 0 does not depend
    on x); raise :class:`InputError` unless every index names a state z_0..z_N, N = max_iter."""
    chosen = tuple(range(1, max_iter + 1)) if indices is None else tuple(indices)
    if not chosen:
        raise InputError(f"the {path} path selects no state")
    for i in chosen:
        check_index(f"the {path} path's state index", i, max_iter, first=0)
    return chosen


def require_broyden(model: DEQClassifier, path: str) -> Broyden:
    """The model's forward solver, which must be Broyden's method (its B_n is reused)."""
    solver = model.deq.solver
    if not isinstance(solver, Broyden):
        raise InputError(f"the {path} path reuses Broyden's inverse-Jacobian estimate B_n, but "
                         f"the model's solver is {type(solver).__name__}; set "
                         "model.deq.solver = Broyden(...) to attack with this path")
    return solver


def check_index_or_ensemble(index: Optional[int], ensemble: bool) -> None:
    """A Broyden-based path reads one state (``index``) or all of them (``ensemble``)."""
    if ensemble and index is not None:
        raise InputError("ensemble=True averages every state; leave index unset")


def broyden_states(model: DEQClassifier, index: Optional[int], ensemble: bool,
                   path: str) -> tuple[int, ...]:
    """The states n whose gradients a path on Broyden's B_n averages: every n = 1..N
    (``ensemble``), the given ``index``, or the final state N = max_iter."""
    max_iter = require_broyden(model, path).max_iter
    chosen = None if ensemble else (max_iter if index is None else index,)
    return resolve_indices(chosen, max_iter, path)


def broyden_path(model: nn.Module, x: Tensor, index: Optional[int], ensemble: bool,
                 path: str) -> tuple[DEQClassifier, tuple[int, ...], "InputLink"]:
    """What a path on Broyden's B_n starts from: the DEQ, the states it averages
    (:func:`broyden_states`) and the input link of x."""
    deq = as_deq(model, path)
    return deq, broyden_states(deq, index, ensemble, path), InputLink(deq, x)


def loss_gradient(model: DEQClassifier, z: Tensor, y: Tensor, loss: LossFn) -> Tensor:
    """dL(z, y)/dz with L(z, y) = sum_b loss(head(z), y)_b (the state z is detached)."""
    z_in = z.detach().requires_grad_()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(model.head(z_in), y).sum(), z_in)
    return grad


class InputLink:
    """u = inject(x) with its graph, a leaf copy ``u`` of it, and the cell z -> f(z, u)."""

    def __init__(self, model: DEQClassifier, x: Tensor):
        self.x = x.detach().requires_grad_()
        with torch.enable_grad():
            self.injection = model.inject(self.x)
        self.u = self.injection.detach().requires_grad_()
        self.cell = model.deq.bind(self.u)

    def input_gradient(self, grad_u: Tensor) -> Tensor:
        """(du/dx)^T grad_u, the shape of x."""
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.injection, self.x, grad_u)
        return grad


class StateMean(Generic[P]):
    """Mean over ``indices`` of ``gradient(payload_i)``, fed state by state (O(1) memory).

    ``visit(n, payload)`` is called for n = 0, 1, ..., T in order; the payload of the state z_n
    is turned into a gradient at once when n is selected, and the last payload is kept so that
    indices beyond T read the frozen last state (see the module docstring).
    """

    def __init__(self, indices: Sequence[int], gradient: Callable[[P], Tensor]):
        self.indices = tuple(indices)
        self.gradient = gradient
        self.total: Optional[Tensor] = None
        self.last_n = -1
        self.last: Optional[P] = None

    @property
    def horizon(self) -> int:
        """The last state index that is read; later states are not needed."""
        return max(self.indices)

    def visit(self, n: int, payload: P) -> None:
        self.last_n, self.last = n, payload
        self._add(self.indices.count(n), payload)

    def mean(self) -> Tensor:
        if self.last is None:
            raise RuntimeError("the solver streamed no state")
        self._add(sum(1 for i in self.indices if i > self.last_n), self.last)
        assert self.total is not None
        return self.total / len(self.indices)

    def _add(self, weight: int, payload: P) -> None:
        if weight:
            grad = weight * self.gradient(payload)
            self.total = grad if self.total is None else self.total + grad
