"""What happens when a forward solve does not converge: warn (default), raise or ignore.

A readout that reads the equilibrium (``Final``, ``Ensemble``) checks the trajectory it ran:
when some sample's final residual (the solver's ``stop_mode``) is above ``factor * tol`` it
warns with :class:`~deqshield.errors.NonConvergenceWarning`, or raises
:class:`~deqshield.errors.NotConvergedError` under ``action="raise"``. The default factor 10
leaves room for a solver that stops a little above its tolerance. Not checked:

* solvers with ``tol=0``: they run a fixed number of steps on purpose (a weight-tied network),
  so there is no tolerance to miss;
* a last residual that was not evaluated (``final_residual=False``): it is unknown, not large;
* the early-state readout, which reads an intermediate state by design, and the
  entropy-reduction defense, whose regulated trajectory changes the input between segments.

The white-box protocol records the non-converged fraction of every cell itself (its
``nonconverged`` flag) and silences the warning while it runs (:func:`records_convergence`);
randomized smoothing, which solves thousands of noisy copies per image, counts them instead
(:func:`convergence_tally`) and reports the count once. The policy is process-wide::

    from deqshield.convergence import (ConvergencePolicy, convergence_policy,
                                       set_convergence_policy)
    set_convergence_policy(ConvergencePolicy(action="raise", factor=100))
    with convergence_policy(ConvergencePolicy(action="ignore")):
        ...
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal, TypeVar

import torch
from pydantic import Field

from deqshield.errors import NonConvergenceWarning, NotConvergedError
from deqshield.settings import component
from deqshield.solvers import Trajectory


@component
class ConvergencePolicy:
    """``action`` on a solve whose final residual exceeds ``factor`` times its tolerance."""

    action: Literal["warn", "raise", "ignore"] = "warn"
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 10.0


_policy = [ConvergencePolicy()]


def get_convergence_policy() -> ConvergencePolicy:
    """The policy in force."""
    return _policy[-1]


def set_convergence_policy(policy: ConvergencePolicy) -> None:
    """Replace the process-wide policy."""
    _policy[-1] = policy


@contextmanager
def convergence_policy(policy: ConvergencePolicy) -> Iterator[None]:
    """Use ``policy`` inside the ``with`` block."""
    _policy.append(policy)
    try:
        yield
    finally:
        _policy.pop()


F = TypeVar("F", bound=Callable[..., object])


def records_convergence(function: F) -> F:
    """Decorator of a function that records non-convergence itself (the protocol's evaluation
    matrix): it runs under ``action="ignore"``."""
    @functools.wraps(function)
    def quiet(*args: object, **kwargs: object) -> object:
        with convergence_policy(ConvergencePolicy(action="ignore")):
            return function(*args, **kwargs)
    return quiet  # type: ignore[return-value]


@dataclasses.dataclass
class Tally:
    """Samples found above the limit inside :func:`convergence_tally`."""

    unconverged: int = 0


_tallies: list[Tally] = []


@contextmanager
def convergence_tally() -> Iterator[Tally]:
    """Inside the block, solves that the policy would warn about are counted in the yielded
    :class:`Tally` instead (the caller reports it); ``action="raise"`` still raises."""
    tally = Tally()
    _tallies.append(tally)
    try:
        yield tally
    finally:
        _tallies.remove(tally)


def check_convergence(trajectory: Trajectory, what: str) -> None:
    """Apply the policy to a finished solve; ``what`` names the caller in the message."""
    policy = get_convergence_policy()
    if policy.action == "ignore" or trajectory.tol == 0:
        return
    residual = trajectory.final_residual
    limit = policy.factor * trajectory.tol
    above = residual > limit  # NaN (not evaluated) compares False
    worst = float(torch.nan_to_num(residual, nan=0.0).max())
    if _tallies:
        _tallies[-1].unconverged += int(above.sum())
    if not bool(above.any()) or (_tallies and policy.action == "warn"):
        return
    message = (f"{what}: {int(above.sum())} of {residual.numel()} samples did not converge "
               f"(final {trajectory.stop_mode} residual up to {worst:.3g} > {policy.factor:g} x "
               f"tol {trajectory.tol:g}); the prediction depends on the iteration budget. More "
               "solver steps or a contractive model help; see deqshield.convergence")
    if policy.action == "raise":
        raise NotConvergedError(message)
    warnings.warn(message, NonConvergenceWarning, stacklevel=3)
