"""Serialized randomized smoothing (SRS) for DEQs with a sound, conservative certificate.

Gao, Hou, Xu & Liu (NeurIPS 2024), "Certified Robustness for Deep Equilibrium Models via
Serialized Random Smoothing": the noisy copies x + delta_i of one input are close to each other,
so their equilibria are too. SRS solves the draws in sequence, each batch with only a few
solver updates (``steps`` K) warm-started from the previous batch's final states (row j of
batch b starts from row j of batch b - 1; the first batch is solved cold with the full solver).
The warm answers h_i are then neither independent nor those of f, the model's own solve
from z_0, so Clopper-Pearson on the counts of h does not bound P[f(x + delta) = c_A].

The paper corrects this with a second estimate, from draws solved both ways, of how often a
warm answer c_A is also f's answer, folded into the counts with the failure probability split
between the two bounds. We use an additive variant whose argument needs nothing about the
chain (no contraction, no convergence, any dependence between the h_i):

* f is what is smoothed; delta_1..delta_n are i.i.d., so K_f = #{i : f(x + delta_i) = c_A}
  ~ Binomial(n, p_A), with c_A fixed by the selection draws (independent of these).
* Let D_i = 1[h_i = c_A and f(x + delta_i) != c_A] and N_D = sum_i D_i. Every draw that the
  chain calls c_A either is c_A under f or is counted in N_D, so K_f >= N_A - N_D, with N_A the
  chain's count of c_A.
* ``checks`` indices I_1..I_m are drawn uniformly with replacement from {1..n}, independently
  of the noise and of the chain, and those draws are also solved cold. Given the whole vector
  (D_1..D_n), the D_{I_j} are i.i.d. Bernoulli(N_D / n), so r = CP_upper(sum_j D_{I_j}, m,
  alpha/2) satisfies P[N_D > n r] <= alpha/2, whatever the chain did.
* Hence with probability >= 1 - alpha (union bound over the two alpha/2 events),
  K_f >= k := N_A - floor(n r), and p_A >= CP_lower(k, n, alpha/2), because the
  Clopper-Pearson lower bound increases with k.

Assumptions: f is deterministic and does not depend on which batch a draw is solved in (up to
floating point); the check indices are independent of the draws. The price is m cold solves
and a bound loosened by about n r / n = r (r ~ -ln(alpha/2) / m when no disagreement is seen),
so m must be a few hundred for r to be small. PREDICT always uses independent solves.

By default (``Serialized.chained`` False) every warm batch starts instead from the first
batch's cold-solved states (row j from row j mod n0 of the selection draws): on a DEQ whose
budgeted solve stops short of its equilibrium the K-step chain drifts from batch to batch
(measured on the zoo's sigma 0.25 DEQ, K = 2: the chain counted c_A on 77-79% of the draws of
two test images where f says c_A on all of them; anchored, on 100%). The certificate above
holds for either start, since it assumes nothing about how h is computed.

A ceiling that no sound correction escapes: whatever the chain computes, f itself is seen on
only m draws. Let f say c_A except on a set E of probability eps on which the chain still says
c_A; with probability (1 - eps)^m no check lands in E and everything observed is as if f were
c_A everywhere. A bound that is sound at level alpha can then claim p_A_lower > 1 - eps only if
(1 - eps)^m <= alpha, so it never exceeds alpha^(1/m), the bound of plain smoothing with m
draws that all say c_A. Spending at most a third of plain smoothing's cell evaluations
(n0 + n cold solves of S cell evaluations each) leaves m <= (n0 + n) / 3 - n K / S checks, so
the radius stays below sigma Phi^-1(alpha^(3 / (n0 + n))) = 2.87 sigma at n0 = 100,
n = 10^4, alpha = 0.001 (plain smoothing: 3.2 sigma), with K = 2 and S = 11 below 2.6 sigma.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.smoothing.bounds import clopper_pearson_lower, clopper_pearson_upper
from deqshield.smoothing.sampling import (BaseReadout, LowerBound, Smoothing, base_predictions,
                                          class_counts, noisy_batches)


class WarmChain:
    """The serialized classifier h: the first batch is solved cold with the model's full
    solver; every later batch with ``steps`` updates of the model's solver (no final residual
    evaluation) from the first batch's final states, or with ``chained`` from the previous
    batch's, and read out with the base readout. An ``Early`` or ``Ensemble`` readout reads the
    K-step warm trajectory as if it were the model's own, a poor estimate of f that the cold
    checks then charge for (sound, but loose)."""

    def __init__(self, model: DEQClassifier, readout: BaseReadout, steps: int,
                 chained: bool = False):
        self.model, self.readout, self.chained = model, readout, chained
        self.solver = dataclasses.replace(model.deq.solver, max_iter=steps,
                                          final_residual=False)
        self.state: Optional[Tensor] = None

    def predict(self, x: Tensor) -> Tensor:
        """h for a batch of noisy inputs; remembers the final states for the next batch."""
        return self.logits(x).argmax(dim=1)

    def logits(self, x: Tensor) -> Tensor:
        """The readout's logits behind :meth:`predict` (one step of the chain)."""
        u = self.model.inject(x)
        if self.state is None:
            solver, z0 = self.model.deq.solver, None
        else:
            rows = torch.arange(x.shape[0], device=x.device) % self.state.shape[0]
            solver, z0 = self.solver, self.state[rows]
        reader = self.readout.reader(self.model, solver.max_iter)
        with torch.no_grad():
            trajectory = self.model.deq.solve(u, solver=solver, z0=z0, callback=reader.observe)
            if self.state is None or self.chained:
                self.state = trajectory.final
            return reader.logits()


def serialized_bound(count: int, samples: int, disagreements: int, checks: int,
                     alpha: float) -> LowerBound:
    """The corrected (1 - alpha) lower bound of the module docstring: the chain counted c_A
    ``count`` times in ``samples`` draws; ``disagreements`` of ``checks`` uniformly drawn
    indices had h = c_A but f != c_A."""
    rate = clopper_pearson_upper(disagreements, checks, alpha / 2)
    allowed = math.floor(samples * rate + 1e-6)  # N_D <= floor(n r); rounding errs upward
    kept = max(0, count - allowed)
    return LowerBound(clopper_pearson_lower(kept, samples, alpha / 2), count, samples,
                      checks, disagreements, rate)


class SerializedSampler:
    """Selection counts from the warm chain; the estimation bound corrected by cold checks."""

    def __init__(self, model: nn.Module, settings: Smoothing,
                 generator: Optional[torch.Generator]):
        if not isinstance(model, DEQClassifier) or settings.serialized is None:
            raise InputError("serialized smoothing needs a DEQ model and Serialized settings")
        self.model, self.settings, self.generator = model, settings, generator
        self.chain = WarmChain(model, settings.readout, settings.serialized.steps,
                               settings.serialized.chained)

    def _batches(self, x: Tensor, num: int):
        return noisy_batches(x, num, self.settings.sigma, self.settings.batch, self.generator)

    def counts(self, x: Tensor, num: int) -> Tensor:
        total = torch.zeros(self.model.num_classes, dtype=torch.long)
        for noisy in self._batches(x, num):
            total += class_counts(self.chain.predict(noisy), self.model.num_classes)
        return total

    def lower_bound(self, x: Tensor, num: int, top: int, alpha: float) -> LowerBound:
        checks = self.settings.serialized.checks  # type: ignore[union-attr]
        picks = torch.randint(0, num, (checks,), generator=self.generator)
        count = disagreements = start = 0
        for noisy in self._batches(x, num):
            warm = self.chain.predict(noisy).cpu()
            count += int((warm == top).sum())
            here = picks[(picks >= start) & (picks < start + noisy.shape[0])] - start
            if here.numel():
                rows, multiplicity = here.unique(return_counts=True)
                cold = base_predictions(self.model, self.settings.readout,
                                        noisy[rows.to(noisy.device)]).cpu()
                wrong = (warm[rows] == top) & (cold != top)
                disagreements += int(multiplicity[wrong].sum())
            start += noisy.shape[0]
        return serialized_bound(count, num, disagreements, checks, alpha)
