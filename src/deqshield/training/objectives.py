"""Training objectives: the loss a training step minimises.

Each objective is a validated settings object with
``loss(model, x, y, randomness) -> StepOutput``:

* ``Standard``: cross-entropy on clean inputs, CE(h(z(x)), y).
* ``PGDAT`` (Madry et al. 2018): min_theta E max_{||dx|| <= eps} CE(h(z(x + dx)), y), the inner
  max approximated by the ``attack`` (PGD) with the gradient path ``FinalState(gradient)``
  (``gradient=None``: the model's own training gradient, Table 7 of closer-look-neurips22).
  ``clean_weight`` w > 0 trains on w CE(h(z(x)), y) + (1 - w) CE(h(z(x')), y), the mixed
  objective of the original adversarial training (Goodfellow et al. 2015, w = 0.5): the clean
  input itself is never produced by a random-start attack, and a normalised DEQ trained only
  on perturbed inputs can lose its clean accuracy.
* ``TRADES`` (Zhang et al. 2019):
  CE(h(z(x)), y) + beta * KL(p(x) || p(x')),  x' = argmax_{||x' - x|| <= eps} KL(p(x) || p(x')),
  the inner max by the same PGD steps ascending the KL instead of the CE.
* ``FastAT`` (FGSM with a random start, N-FGSM) and ``FreeAT`` (free adversarial training):
  the one-step objectives of :mod:`deqshield.training.fast_at`.
* ``GaussianNoise`` (Cohen et al. 2019): CE(h(z(x + delta)), y), delta ~ N(0, sigma^2 I), the
  base classifier of randomized smoothing (:mod:`deqshield.training.noise`).
* ``Certified`` (CerDEQ Sec. 3.6 / Fast-IBP): the certified objective of
  :func:`deqshield.certify.certified_loss` at eps_now = schedule(step), the global optimizer
  step, for a :class:`~deqshield.certify.CertifiableClassifier` (CerDEQ or CNN-7).

Adversarial warm-up (``warmup``, PGD-AT and TRADES): at optimizer step t the adversary attacks
at eps_t = r(t) eps with step size r(t) alpha, r ramping linearly from 0 at step ``start`` to 1
at step ``start + length`` (clean inputs while r = 0). A large radius from the first step can
collapse a small network to a constant prediction (MNIST at eps 0.3, cf. Madry et al. 2018 on
capacity); the ramp is the usual remedy (Gowal et al. 2018). Checkpoint selection and
evaluation always attack at the full radius.

Adversaries are generated in **eval mode** (batch norm with running statistics, dropout off,
the full deterministic solver): the attack targets exactly the model that is evaluated and
selected, and the attack's forward passes do not update batch-norm statistics. The loss is then
computed in train mode.

Random intermediate states (``random_intermediate=True``, Eq. 10 of
regulating-dynamics-icml23): the loss reads out h(z_i) for a state z_i of the forward solve
with i ~ U{1, ..., N} (N the solver's ``max_iter``), drawn once per loss
evaluation from ``randomness.depth``, a generator owned (and checkpointed) by the trainer, before
the solve, which keeps only z_i (a solve that stops early reads its frozen last state). The
gradient is attached at z_i by the model's gradient mode applied to the trajectory truncated at
z_i: ``Phantom`` unrolls k damped steps from z_i, ``Implicit`` backpropagates the adjoint
equation at z_i, ``Backprop`` unrolls i plain steps from z_0. The random depth lives only inside
this loss: adversary generation, validation attacks, checkpoint selection and evaluation call
the model itself (full deterministic solver).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.attacks.pgd import PGD
from deqshield.certify import (CertifiableClassifier, CertifiedObjective, EpsilonSchedule,
                               certified_objective)
from deqshield.errors import InputError
from deqshield.gradients import GradientSpec
from deqshield.models import DEQClassifier
from deqshield.paths import FinalState
from deqshield.paths.base import LossFn
from deqshield.settings import component
from deqshield.solvers import SolverStep, Trajectory


@dataclass
class StepOutput:
    """A training step's loss, the logits it scored, and the DEQ trajectory (None for explicit
    models) of ``inputs`` (the clean or adversarial batch scored), whose equilibrium the
    Jacobian regulariser uses. ``robust``: the logits belong to adversarial inputs."""

    loss: Tensor
    logits: Tensor
    trajectory: Optional[Trajectory]
    inputs: Tensor
    robust: bool = False
    after_backward: Optional[Callable[[], None]] = None
    """Called by the loop after ``loss.backward()`` (free AT reads the input gradient there)."""


@dataclass
class StepRandomness:
    """Generators a training step draws from (None means torch's global generator), and the
    step's position.

    ``depth``: the random intermediate index i; ``attack``: PGD random starts; ``step``: the
    number of optimizer steps taken before this one (for schedules such as eps warm-up);
    ``carry``: tensors an objective keeps from one step to the next (free AT's perturbation),
    owned by the trainer.
    """

    depth: Optional[torch.Generator] = None
    attack: Optional[torch.Generator] = None
    step: int = 0
    carry: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Trajectory]]:
    """Logits and, for a DEQ, its forward trajectory (full solver, model's gradient mode)."""
    if isinstance(model, DEQClassifier):
        return model.forward_with_trajectory(x)
    return model(x), None


def truncated_at(trajectory: Trajectory, i: int, z_i: Tensor) -> Trajectory:
    """The trajectory z_0..z_i of a solve (``final`` = z_i; the states are not kept)."""
    return dataclasses.replace(
        trajectory, final=z_i, states=[], abs_residual=trajectory.abs_residual[: i + 1],
        rel_residual=trajectory.rel_residual[: i + 1],
        iterations=trajectory.iterations.clamp(max=i))


def random_intermediate_forward(model: nn.Module, x: Tensor,
                                generator: Optional[torch.Generator]
                                ) -> tuple[Tensor, Trajectory]:
    """h(z_i) with i ~ U{1..N} (N the solver's ``max_iter``) and the gradient mode attached at
    z_i; the full trajectory. The index is drawn before the solve and z_i is kept as the
    solver streams it, so no other state is stored (memory flat in N); a solve that stops at
    T < i has the frozen state z_i = z_T, as the readouts read it."""
    if not isinstance(model, DEQClassifier):
        raise InputError("random_intermediate needs a DEQ model, got "
                         f"{type(model).__name__}")
    u = model.inject(x)
    i = int(torch.randint(1, model.deq.solver.max_iter + 1, (1,), generator=generator))
    picked: dict[str, Tensor] = {}

    def keep(step: SolverStep) -> None:
        if step.n == i:
            picked["z"] = step.state.clone()

    trajectory = model.deq.solve(u, callback=keep)
    z_i = picked.get("z", trajectory.final)
    z = model.deq.gradient.attach(model.deq.bind(u), truncated_at(trajectory, i, z_i))
    return model.head(z), trajectory


def training_forward(model: nn.Module, x: Tensor, random_intermediate: bool,
                     randomness: StepRandomness) -> tuple[Tensor, Optional[Trajectory]]:
    """The logits a loss uses: the equilibrium, or a random intermediate state (Eq. 10)."""
    if random_intermediate:
        return random_intermediate_forward(model, x, randomness.depth)
    return forward(model, x)


def generate_in_eval_mode(model: nn.Module, attack: PGD, x: Tensor, y: Tensor,
                          path: FinalState | KLToReference,
                          generator: Optional[torch.Generator]) -> Tensor:
    """``attack.perturb`` with the model in eval mode; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return attack.run(model, path, x, y, generator=generator).x_adv
    finally:
        model.train(was_training)


def kl_divergence(reference_log_probs: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL(p || q), p = exp(reference_log_probs), q = softmax(logits)."""
    log_q = nn.functional.log_softmax(logits, dim=1)
    p = reference_log_probs.exp()
    return (p * (reference_log_probs - log_q)).sum(dim=1)


@dataclass(frozen=True)
class KLToReference:
    """Gradient path for the TRADES inner maximisation: d KL(p(x) || p(x')) / dx' through
    ``FinalState(gradient)``. PGD passes its own loss and labels; this path replaces them by the
    KL to the fixed clean log-probabilities, so PGD's projection and steps are reused as is."""

    reference_log_probs: Tensor
    gradient: Optional[GradientSpec]
    name: str = "kl-to-reference"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        def kl(logits: Tensor, _: Tensor) -> Tensor:
            return kl_divergence(self.reference_log_probs, logits)

        return FinalState(gradient=self.gradient).input_gradient(model, x, y, kl)


@component
class Warmup:
    """Linear adversarial warm-up: r(t) = clip((t - ``start``) / ``length``, 0, 1)."""

    length: Annotated[int, Field(gt=0)]
    start: Annotated[int, Field(ge=0)] = 0

    def factor(self, step: int) -> float:
        """r(step) in [0, 1]: the certified-training ramp with target 1 and exponent 1, which
        is linear."""
        return EpsilonSchedule(target=1.0, length=self.length, start=self.start,
                               exponent=1.0)(step)


def warmup_factor(warmup: Optional[Warmup], step: int) -> float:
    """r(step) of the warm-up, 1 without one."""
    return 1.0 if warmup is None else warmup.factor(step)


def adversary_at(attack: PGD, warmup: Optional[Warmup], step: int) -> Optional[PGD]:
    """The attack of optimizer step ``step``: ``attack`` with eps and step size scaled by the
    warm-up factor r(step); None while r(step) = 0 (train on clean inputs)."""
    r = warmup_factor(warmup, step)
    return None if r == 0.0 else attack.at_radius(r * attack.eps)


@component
class Standard:
    """Cross-entropy on clean inputs (optionally at a random intermediate state)."""

    name: Literal["standard"] = "standard"
    random_intermediate: bool = False

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        logits, trajectory = training_forward(model, x, self.random_intermediate, randomness)
        return StepOutput(nn.functional.cross_entropy(logits, y), logits, trajectory, x)


@component
class PGDAT:
    """PGD adversarial training: CE on adversaries of ``attack`` with gradient ``gradient``
    (optionally with an adversarial ``warmup``)."""

    name: Literal["pgd-at"] = "pgd-at"
    attack: PGD = PGD()
    gradient: Optional[GradientSpec] = None
    random_intermediate: bool = False
    warmup: Optional[Warmup] = None
    clean_weight: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        attack = adversary_at(self.attack, self.warmup, randomness.step)
        if attack is None:
            return Standard(random_intermediate=self.random_intermediate).loss(
                model, x, y, randomness)
        x_adv = generate_in_eval_mode(model, attack, x, y, FinalState(gradient=self.gradient),
                                      randomness.attack)
        return adversarial_loss(model, x, x_adv, y, self.clean_weight,
                                self.random_intermediate, randomness)


def adversarial_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, clean_weight: float,
                     random_intermediate: bool, randomness: StepRandomness) -> StepOutput:
    """w CE(h(z(x)), y) + (1 - w) CE(h(z(x_adv)), y) with w = ``clean_weight`` (the clean
    term only when w > 0), at random intermediate states if asked."""
    logits, trajectory = training_forward(model, x_adv, random_intermediate, randomness)
    loss = nn.functional.cross_entropy(logits, y)
    if clean_weight > 0:
        clean = Standard(random_intermediate=random_intermediate)
        loss = clean_weight * clean.loss(model, x, y, randomness).loss + (1 - clean_weight) * loss
    return StepOutput(loss, logits, trajectory, x_adv, robust=True)


@component
class TRADES:
    """TRADES: CE(clean) + beta KL(p(x) || p(x')), x' maximising the KL with ``attack``
    (optionally with an adversarial ``warmup``)."""

    name: Literal["trades"] = "trades"
    beta: Annotated[float, Field(ge=0)] = 6.0
    attack: PGD = PGD()
    gradient: Optional[GradientSpec] = None
    random_intermediate: bool = False
    warmup: Optional[Warmup] = None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        attack = adversary_at(self.attack, self.warmup, randomness.step)
        if attack is None:
            return Standard(random_intermediate=self.random_intermediate).loss(
                model, x, y, randomness)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            reference = nn.functional.log_softmax(model(x), dim=1)
        model.train(was_training)
        x_adv = generate_in_eval_mode(model, attack, x, y,
                                      KLToReference(reference, self.gradient), randomness.attack)
        clean_logits, _ = training_forward(model, x, self.random_intermediate, randomness)
        adv_logits, trajectory = training_forward(model, x_adv, self.random_intermediate,
                                                  randomness)
        clean_log_probs = nn.functional.log_softmax(clean_logits, dim=1)
        robust_term = kl_divergence(clean_log_probs, adv_logits).mean()
        loss = nn.functional.cross_entropy(clean_logits, y) + self.beta * robust_term
        return StepOutput(loss, adv_logits, trajectory, x_adv, robust=True)


@component
class Certified:
    """Certified training: L = (L_c + lambda_n L_n) / (1 + lambda_n) + lambda (L_t + L_r) at
    eps_now = ``schedule(step)``, lambda = lambda_0 (1 - eps_now / eps), eps =
    ``schedule.target`` (see :mod:`deqshield.certify.objective`; ``weights`` holds lambda_n,
    lambda_0, tau and the valid input range). The logits reported are the clean ones."""

    name: Literal["certified"] = "certified"
    schedule: EpsilonSchedule = EpsilonSchedule(target=8 / 255, length=1000)
    weights: CertifiedObjective = CertifiedObjective()

    def __post_init__(self) -> None:
        if not self.schedule.target > 0:
            raise InputError(f"certified training needs eps > 0, got {self.schedule.target}")

    @property
    def eps(self) -> float:
        """The target radius eps."""
        return self.schedule.target

    def loss(self, model: nn.Module, x: Tensor, y: Tensor,
             randomness: StepRandomness = StepRandomness()) -> StepOutput:
        if not isinstance(model, CertifiableClassifier):
            raise InputError("certified training needs a certifiable model (cerdeq, cnn7), got "
                             f"{type(model).__name__}")
        result = certified_objective(model, x, y, self.schedule(randomness.step), self.eps,
                                     self.weights)
        return StepOutput(result.loss, result.logits.detach(), None, x)

