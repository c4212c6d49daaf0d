"""AutoAttack (Croce & Hein 2020, reference implementation ``pyautoattack``) on a defended DEQ.

AutoAttack receives a :class:`~deqshield.attacks.straight_through.StraightThrough` model: its
forward is the defense's own prediction (so AutoAttack attacks, and skips, exactly the points the
defense classifies correctly) and its backward is the chosen gradient path. AutoAttack's checks
for randomised, dynamic or otherwise suspicious defenses are captured and returned as findings,
to be reported rather than discarded (they become obfuscation flags of the report, see
:mod:`deqshield.evaluate.flags`).
"""

from __future__ import annotations

import logging
import warnings
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack
from torch import Tensor

from deqshield.attacks.base import AttackResult, Scoreboard
from deqshield.validation import check_eps, check_labels, check_range
from deqshield.attacks.straight_through import StraightThrough
from deqshield.models import Classifier
from deqshield.paths.base import GradientPath
from deqshield.readouts.base import Readout
from deqshield.readouts.states import Final
from deqshield.settings import component

AutoAttackName = Literal["apgd-ce", "apgd-t", "fab-t", "square"]
GRADIENT_FREE: frozenset[str] = frozenset({"square"})
"""AutoAttack members that use no gradient."""
BOUNDS = (0.0, 1.0)
"""AutoAttack's fixed input range."""
_LOGGER_NAME = "auto-attack"
_NORMS = {"linf": "Linf", "l2": "L2"}
_LABELS = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


@component
class AutoAttackBridge:
    """AutoAttack, version "custom", with the listed ``attacks`` in order.

    ``apgd_iterations``/``fab_iterations``/``square_queries`` are the reference's 100/100/5000;
    ``target_classes`` is capped at (classes - 1) for the targeted attacks.
    """

    name: Literal["autoattack"] = "autoattack"
    attacks: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    norm: Literal["linf", "l2"] = "linf"
    apgd_iterations: Annotated[int, Field(ge=1)] = 100
    fab_iterations: Annotated[int, Field(ge=1)] = 100
    square_queries: Annotated[int, Field(ge=1)] = 5000
    target_classes: Annotated[int, Field(ge=1)] = 9
    restarts: Annotated[int, Field(ge=1)] = 1
    seed: int = 0
    batch_size: Annotated[int, Field(ge=1)] = 250

    def __post_init__(self) -> None:
        check_eps(self.eps, BOUNDS, self.norm, "AutoAttackBridge.eps")

    @property
    def label(self) -> str:
        return ", ".join(_LABELS[member] for member in self.attacks)

    @property
    def gradient_free(self) -> bool:
        """True when no member attack uses the gradient path."""
        return set(self.attacks) <= GRADIENT_FREE

    @property
    def cheap(self) -> bool:
        return False

    def at_radius(self, eps: float) -> "AutoAttackBridge":
        return dataclasses.replace(self, eps=eps)

    def capped(self, iterations: int, queries: int) -> "AutoAttackBridge":
        return dataclasses.replace(
            self, apgd_iterations=min(self.apgd_iterations, iterations),
            fab_iterations=min(self.fab_iterations, iterations),
            square_queries=min(self.square_queries, queries))

    def starts(self, x: Tensor, generator: Optional[torch.Generator]) -> Optional[Tensor]:
        """AutoAttack draws its randomness per batch from one seed: here a (1, N) tensor of
        seeds, one per sample, drawn from ``generator`` (None without one: ``seed`` is used).
        A batch runs with the seed of its first sample, so that the columns of an evaluation,
        and evaluations with another ``--seed``, are independent draws."""
        if generator is None:
            return None
        return torch.randint(0, 2**31 - 1, (1, len(x)), generator=generator)

    def run(self, model: Classifier, path: GradientPath, x: Tensor, y: Tensor, *,
            defenses: Sequence[Readout] = (), start: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None,
            pending: Optional[Tensor] = None) -> AttackResult:
        """AutoAttack against each defense's prediction (``Final`` without defenses) with
        ``path``'s gradient, each on the samples ``pending`` for that defense; ``x_adv`` is the
        run against the first. AutoAttack keeps the best example over its iterates and restarts
        itself; every defense then scores every run, and a defense no run breaks keeps its own
        run's example as witness. ``start``: this batch's rows of :meth:`starts` (AutoAttack
        is seeded with the first; drawn here from ``generator`` if None; without either,
        ``seed``)."""
        check_range(x, BOUNDS)
        check_labels(y, x.shape[0], model.num_classes)
        x = x.detach()
        targets = tuple(defenses) or (Final(),)
        if start is None:
            start = self.starts(x, generator)
        seed = self.seed if start is None or start.numel() == 0 else int(start[0, 0])
        board = Scoreboard(model, defenses, x, y, pending)
        runs, findings = [], []
        for d, readout in enumerate(targets):
            rows = board.pending(d) if defenses else torch.ones_like(y, dtype=torch.bool)
            x_adv = x.clone()
            if rows.any():
                x_adv[rows], found = self._attack(model, readout, path, x[rows], y[rows], seed)
                findings.extend(f for f in found if f not in findings)
            runs.append(x_adv)
        everyone = torch.arange(len(y), device=y.device)
        for x_adv in runs[:len(defenses)]:  # an example crafted against one defense may
            board.score(x_adv, everyone)    # break another: kept, as PGD's iterates are
        result = board.result(runs[0], tuple(findings),
                              unbroken=torch.stack(runs[:len(defenses)]) if defenses else None)
        result.check(x, self.eps, self.norm, BOUNDS)
        return result

    def _attack(self, model: Classifier, readout: Readout, path: GradientPath, x: Tensor,
                y: Tensor, seed: int) -> tuple[Tensor, list[str]]:
        if self.eps == 0:
            return x.clone(), []
        runner = self._runner(StraightThrough(model, readout, path), model.num_classes, x.device,
                              seed)
        with _captured_findings() as findings:
            x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv.detach().to(x.dtype), findings

    def _runner(self, target: StraightThrough, num_classes: int, device: torch.device,
                seed: int) -> AutoAttack:
        norm = _NORMS[self.norm]
        targets = max(1, min(self.target_classes, num_classes - 1))
        runner = AutoAttack(target, attacks=list(self.attacks), device=device, eps=self.eps,
                            norm=norm, seed=seed, version="custom")
        common = dict(norm=norm, eps=self.eps, seed=seed, device=device, verbose=False)
        runner.apgd = APGDAttack(target, n_iter=self.apgd_iterations, n_restarts=self.restarts,
                                 logger=runner.logger, **common)
        runner.apgd_targeted = APGDAttack_targeted(
            target, n_iter=self.apgd_iterations, n_restarts=self.restarts,
            n_target_classes=targets, logger=runner.logger, **common)
        runner.fab = FABAttack_PT(target, n_iter=self.fab_iterations, n_restarts=1,
                                  n_target_classes=targets, **common)
        runner.square = SquareAttack(target, n_queries=self.square_queries, p_init=0.8,
                                     n_restarts=self.restarts, resc_schedule=False, **common)
        return runner


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def _captured_findings() -> Iterator[list[str]]:
    """Collect AutoAttack's warnings (logged, or ``warnings.warn``-ed with the bare ``Warning``
    category its checks use) instead of printing them."""
    findings: list[str] = []
    logger = logging.getLogger(_LOGGER_NAME)
    handler = _ListHandler(findings)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield findings
        findings.extend(str(w.message) for w in caught if w.category is Warning)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
