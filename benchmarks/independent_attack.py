"""An attacker written apart from deqshield's attack code, to check an evaluation's verdicts.

It uses only the model's pieces (``inject``, ``deq.cell``, ``head``) and the defended
predictions (the readouts of ``results.json``'s defenses, a fresh solve from z_0 per scored
input), and implements its own sign-gradient ascent with random restarts, scoring every iterate:

* surrogates: backpropagation through N plain iterations from z_0 (N = the solver's
  ``max_iter``, and 2N), through the first k iterations (k = 1, 2) and through the first
  ``index`` iterations of every early readout among the defenses -- the logits of the
  unrolled state; the defenses are rebuilt from the settings ``results.json`` records;
* for an explicit network (no ``deq``) the one surrogate is the network's own logits;
* losses: cross-entropy and the Carlini-Wagner margin;
* ``--restarts`` random starts each, ``--steps`` steps of size eps / 4 (and eps / 10);
* or, with ``--autoattack [ATTACK ...]``, the reference AutoAttack (``pyautoattack``, the standard
  version's budgets: APGD 100 iterations with one restart, 9 target classes, Square 5000
  queries; all four members, or those listed) on the unrolled logits at the depth of each
  readout (the solver's ``max_iter`` and every early readout's index), its adversarial
  examples scored by every defense;
* with ``--autoattack ... --through-defenses [LABEL ...]``, the same AutoAttack through each
  defense that transforms its input (test-time entropy reduction; those labelled, default all),
  the forward pass being the defense's own logits, so AutoAttack's losses, step-size schedule
  and success checks see exactly what the defense predicts; the backward pass (``--through-
  gradient``) is that of the defense's Algorithm 1 written out here with autograd (``exact``:
  plain damped steps, the sign steps' direction held constant, x's gradient through the box
  projection and the injections) or BPDA (Athalye et al. 2018: the defense's final input x' taken
  as x plus a constant, the gradient of the unrolled logits at x', depth the base readout's).
  Only the samples those defenses count robust are attacked.

A sample that this attacker breaks for a defense while ``results.json`` lists it among the
defense's ``robust_samples`` is an outside finding: the evaluation overstated robustness. Only the
samples some defense counts robust are attacked (no other sample can be such a finding); the
printed "lowered to" figure is the evaluation's worst case minus those findings.

With ``--all-samples`` every sample is attacked (a misclassified one is broken unattacked) and
each defense's accuracy under this attacker alone is printed as well: with ``--autoattack`` the
reference AutoAttack accuracy a card records (``deqshield zoo update NAME
--reference-autoattack``).

    python benchmarks/independent_attack.py RUN_DIR RESULTS_JSON --eps 0.1 [--limit 64]
    python benchmarks/independent_attack.py RUN_DIR RESULTS_JSON --eps 0.3 --autoattack apgd-ce apgd-t
    python benchmarks/independent_attack.py RUN_DIR RESULTS_JSON --eps 0.3 --autoattack apgd-ce apgd-t --all-samples
    python benchmarks/independent_attack.py RUN_DIR RESULTS_JSON --eps 0.1 --autoattack apgd-ce apgd-t --through-defenses

``--start S --limit L`` checks only the samples S <= i < L (a long check split in parts);
``--seed K`` gives a repeated check other random draws (restarts, AutoAttack's seeds).
``--out DIR`` also writes the findings (per defense: the samples it broke among those counted
robust, and with ``--all-samples`` the accuracy under this attacker) to
``DIR/independent_attack.json``, so checks made in parts or repeated can be merged by sample.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from pyautoattack import AutoAttack
from pydantic import TypeAdapter
from torch import Tensor, nn

from deqshield.convergence import convergence_tally
from deqshield.evaluate.matrix import materialize
from deqshield.readouts import Early, Ensemble, EntropyReduction, ReadoutSpec
from deqshield.io.runs import load_run
from results_io import run_config, write_results


def unrolled_logits(model, x: Tensor, depth: int) -> Tensor:
    """The logits after ``depth`` plain iterations from z_0; an explicit network's logits."""
    if not hasattr(model, "deq"):
        return model(x)
    u = model.inject(x)
    z = model.deq.cell.initial_state(u)
    for _ in range(depth):
        z = model.deq.cell(z, u)
    return model.head(z)


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other[torch.arange(len(y)), y] = -float("inf")
    return (other.max(dim=1).values - true).sum()


AUTOATTACK_MEMBERS = ["apgd-ce", "apgd-t", "fab-t", "square"]
LOSSES = {"ce": lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="sum"),
          "margin": margin_loss}


def attack(model, readouts: dict, x: Tensor, y: Tensor, eps: float, depth: int, loss: str,
           step: float, steps: int, restarts: int, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    broken = {name: torch.zeros(len(y), dtype=torch.bool) for name in readouts}
    for _ in range(restarts):
        x_adv = (x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
        for t in range(steps + 1):
            with torch.no_grad():
                for name, readout in readouts.items():
                    broken[name] |= readout.logits(model, x_adv).argmax(1) != y
            if t == steps:
                break
            x_var = x_adv.clone().requires_grad_()
            value = LOSSES[loss](unrolled_logits(model, x_var, depth), y)
            (grad,) = torch.autograd.grad(value, x_var)
            x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1).detach()
    return broken


class Unrolled(nn.Module):
    """The logits after ``depth`` plain iterations from z_0, as a module for AutoAttack."""

    def __init__(self, model, depth: int):
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, x: Tensor) -> Tensor:
        return unrolled_logits(self.model, x, self.depth)


def base_depth(spec, n: int) -> int:
    """The unrolled depth that stands for a readout: an early readout's index, else N."""
    return spec.index if isinstance(spec, Early) else n


def read_states(model, spec, states: list[Tensor]) -> Tensor:
    """A trajectory readout of z_0..z_N: head(z_i) (early), head(mean z_first..z_N) (ensemble),
    head(z_N) (final)."""
    if isinstance(spec, Early):
        return model.head(states[spec.index])
    if isinstance(spec, Ensemble):
        return model.head(torch.stack(states[spec.first:]).mean(dim=0))
    return model.head(states[-1])


def regulated_states(model, defense: EntropyReduction, x: Tensor) -> list[Tensor]:
    """Test-time entropy reduction (regulating-dynamics-icml23, Algorithm 1) written out with
    autograd: N damped plain steps from z_0; after every T_f-th step, R projected sign steps
    x' <- Proj(x' - beta sign grad_x' H(head(f(z; x')))) in the eps-box around x (the sign is a
    constant of the step), then that step recomputed from the previous state with the new
    input. x's gradient flows through the box projection and the injections."""
    damping = getattr(model.deq.solver, "damping", 1.0)

    def step(z: Tensor, u: Tensor) -> Tensor:
        return z + damping * (model.deq.cell(z, u) - z)

    u = model.inject(x)
    states, x_now = [model.deq.cell.initial_state(u)], x
    for t in range(model.deq.solver.max_iter):
        z = step(states[-1], u)
        if defense.steps and (t + 1) % defense.interval == 0:
            for _ in range(defense.steps):
                probe = x_now.detach().requires_grad_()
                with torch.enable_grad():
                    logits = model.head(model.deq.cell(z.detach(), model.inject(probe)))
                    p = logits.softmax(dim=1)
                    entropy = -(p * logits.log_softmax(dim=1)).sum()
                    (grad,) = torch.autograd.grad(entropy, probe)
                x_now = x_now - defense.step_size * grad.sign()
                x_now = torch.min(torch.max(x_now, x - defense.eps), x + defense.eps)
                x_now = x_now.clamp(*defense.bounds)
            u = model.inject(x_now)
            z = step(states[-1], u)
        states.append(z)
    return states


class ThroughDefense(nn.Module):
    """A defense's own logits forward; backward either the gradient of ``regulated_states``'
    readout (``exact``) or BPDA: with x' the input the defense ends with, the gradient of the
    logits after ``depth`` plain iterations at x', i.e. d x' / d x = I."""

    def __init__(self, model, defense: EntropyReduction, depth: int, gradient: str = "exact"):
        super().__init__()
        self.model, self.defense, self.depth, self.gradient = model, defense, depth, gradient

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            regulated = self.defense.regulate(self.model, x)
            logits = self.defense.read(self.model, regulated)
        if self.gradient == "exact":
            surrogate = read_states(self.model, self.defense.base,
                                    regulated_states(self.model, self.defense, x))
        else:
            shifted = x + (regulated.final_input - x).detach()
            surrogate = unrolled_logits(self.model, shifted, self.depth)
        return logits + surrogate - surrogate.detach()


def auto_attack(model, readouts: dict, x: Tensor, y: Tensor, eps: float, target: nn.Module,
                members: list[str], seed: int) -> dict[str, Tensor]:
    """AutoAttack's standard budgets on ``target``'s logits, restricted to ``members``; which
    of its adversarial examples each defense misclassifies."""
    adversary = AutoAttack(target, eps=eps, norm="Linf", seed=seed, version="standard")
    adversary.attacks_to_run = members  # keeps the standard version's budgets
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        return {name: readout.logits(model, x_adv).argmax(1) != y
                for name, readout in readouts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--autoattack", nargs="*", choices=AUTOATTACK_MEMBERS,
                        help="run AutoAttack (standard budgets; these members, default all "
                             "four) instead of the sign-gradient attack")
    parser.add_argument("--out", type=Path, help="folder for independent_attack.json")
    parser.add_argument("--seed", type=int, default=0,
                        help="random draws of a repeated check (seed * 100 + depth per run)")
    parser.add_argument("--all-samples", action="store_true",
                        help="attack every sample, not only those some defense counts robust, "
                             "and print each defense's accuracy under this attacker alone")
    parser.add_argument("--through-defenses", nargs="*", metavar="LABEL",
                        help="with --autoattack: attack through these entropy-reduction "
                             "defenses (labels as results.json has them; default all of them), "
                             "their logits forward, instead of the unrolled logits")
    parser.add_argument("--through-gradient", choices=["exact", "bpda"],
                        help="with --through-defenses: the backward pass through a defense, "
                             "the unrolled regulated dynamics (exact, the default) or BPDA at "
                             "its final input")
    args = parser.parse_args()
    if args.through_defenses is not None and args.autoattack is None:
        parser.error("--through-defenses needs --autoattack")
    if args.through_gradient is not None and args.through_defenses is None:
        parser.error("--through-gradient needs --through-defenses")
    run = load_run(args.run, data_dir=args.data_dir)
    model = run.model.eval()
    results = json.loads(args.results.read_text())
    start, limit = args.start, results["samples"] if args.limit is None else args.limit
    checked = range(start, limit)
    recorded = json.dumps(results["protocol"]["defenses"])
    specs = TypeAdapter(list[ReadoutSpec]).validate_json(recorded)
    readouts = {row["label"]: spec for row, spec in zip(results["defenses"], specs)}
    through = {}
    if args.through_defenses is not None:
        transforming = {label: spec for label, spec in readouts.items()
                        if isinstance(spec, EntropyReduction)}
        unknown = sorted(set(args.through_defenses) - set(transforming))
        if unknown or not transforming:
            parser.error(f"no entropy-reduction defense {unknown or ''} in {args.results} "
                         f"(it has: {sorted(transforming) or 'none'})")
        through = {label: spec for label, spec in transforming.items()
                   if not args.through_defenses or label in args.through_defenses}
    targets = through or readouts
    attacked = list(checked) if args.all_samples else sorted(
        {i for row in results["defenses"] if row["label"] in targets
         for i in row["robust_samples"] if i in checked})
    x, y = materialize(run.test.subset(attacked, "attacked"))
    total = {name: torch.zeros(len(y), dtype=torch.bool) for name in readouts}
    early = {spec.index for spec in specs if isinstance(spec, Early)}
    n = model.deq.solver.max_iter if hasattr(model, "deq") else None
    if args.autoattack is not None:
        members = args.autoattack or AUTOATTACK_MEMBERS
        if through:
            runs = [partial(auto_attack, members=members, seed=args.seed * 100 + k,
                            target=ThroughDefense(model, spec, base_depth(spec.base, n),
                                                  args.through_gradient or "exact"))
                    for k, spec in enumerate(through.values())]
        else:
            runs = [partial(auto_attack, target=Unrolled(model, depth), members=members,
                            seed=args.seed * 100 + depth)
                    for depth in (sorted({n} | early) if n is not None else [0])]
    else:
        runs = [partial(attack, depth=depth, loss=loss, step=step, steps=args.steps,
                        restarts=args.restarts, seed=args.seed * 100 + depth)
                for depth in (sorted({1, 2, n, 2 * n} | early) if n is not None else [0])
                for loss in LOSSES for step in (args.eps / 4, args.eps / 10)]
    with convergence_tally() as tally:  # one count, not a warning per scored iterate
        if args.all_samples:  # a misclassified sample is broken before any attack
            with torch.no_grad():
                for name, readout in readouts.items():
                    total[name] |= readout.logits(model, x).argmax(1) != y
        for run_attack in runs:
            found = run_attack(model, readouts, x, y, args.eps)
            for name in readouts:
                total[name] |= found[name]
    which = "" if args.all_samples else (" some defense attacked through counts robust" if through
                                         else " some defense counts robust")
    print(f"attacked the {len(attacked)} of samples {start}..{limit - 1}{which}"
          f" ({tally.unconverged} scored sample solves did not converge)")
    findings = {"config": run_config(x.device, **vars(args) | {"run": str(args.run),
                                                                "results": str(args.results),
                                                                "out": str(args.out)}),
                "samples": [start, limit], "attacked": len(attacked), "defenses": {}}
    for row in results["defenses"]:
        name = row["label"]
        robust = {i for i in row["robust_samples"] if i in checked}
        broken = {attacked[k] for k in total[name].nonzero().squeeze(1).tolist()}
        missed = sorted(robust & broken)
        print(f"{name}: deqshield robust {len(robust)}/{len(checked)} "
              f"({len(robust) / len(checked):.3f}), "
              f"lowered to {(len(robust) - len(missed)) / len(checked):.3f} by the independent "
              f"attacker; samples deqshield counted robust that it broke: {missed or 'none'}")
        finding = {"robust": len(robust), "broken_robust": missed}
        if args.all_samples:
            survived = len(checked) - int(total[name].sum())
            print(f"{name}: accuracy under this attacker alone {survived}/{len(checked)} "
                  f"({survived / len(checked):.4f})")
            finding["correct_under_attack"] = survived
        findings["defenses"][name] = finding
    if args.out is not None:
        write_results(args.out, "independent_attack", findings)


if __name__ == "__main__":
    main()
