"""Cost of the full white-box protocol relative to one plain PGD-10 evaluation.

A small convolutional DEQ is trained on the scikit-learn digits for a few epochs (standard
training by default, ``--pgd-at`` for PGD-AT), then timed on the same test images:

* one plain PGD-10 evaluation of the final readout (ready-made gradient, last iterate scored);
* ``standard_protocol`` (defenses final / early / ensemble, every gradient path, APGD-CE/T
  with each strong path and Square with ``--autoattack``), three ways: exhaustive; with the
  early exit; with the screening and the early exit (the cheap mode). The per-sample verdicts
  of each cheap run are compared with the exhaustive run's (they must agree).

    python benchmarks/protocol_cost.py [--samples 100] [--autoattack] [--pgd-at] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from results_io import write_results
from torch.utils.data import Subset

from deqshield.attacks import PGD
from deqshield.data import load_dataset
from deqshield.models import ConvDEQSettings
from deqshield.paths import FinalState
from deqshield.evaluate import run_protocol
from deqshield.evaluate.matrix import materialize, predict
from deqshield.evaluate.specs import Screening
from deqshield.evaluate.standard import AttackBudget, standard_protocol
from deqshield.readouts import Final
from deqshield.settings import settings_dict
from deqshield.solvers import Broyden
from deqshield.training import fit
from deqshield.training.objectives import PGDAT, Standard

EPS = 0.1


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--autoattack", action="store_true", help="include APGD and Square")
    parser.add_argument("--apgd-iterations", type=int, default=20)
    parser.add_argument("--square-queries", type=int, default=300)
    parser.add_argument("--pgd-at", action="store_true", help="train with PGD-AT (eps 0.1)")
    parser.add_argument("--out", type=Path, help="folder for protocol_cost.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = ConvDEQSettings(channels=16, downsample=1, solver=Broyden(max_iter=8, tol=1e-4)).build(
        train.input_shape, 10)
    objective = PGDAT(attack=PGD(eps=EPS, step_size=EPS / 4, steps=5)) if args.pgd_at \
        else Standard()
    fit(model, train, epochs=4, batch_size=64, lr=3e-3, objective=objective, progress=False)
    model.eval()
    data = Subset(test, range(args.samples))
    x, y = materialize(data)
    plain = PGD(eps=EPS, step_size=EPS / 4, steps=10)

    def plain_evaluation() -> float:
        x_adv = plain.run(model, FinalState(), x, y,
                          generator=torch.Generator().manual_seed(0)).x_adv
        return float((predict(model, Final(), x_adv, 128) == y).float().mean())

    _, baseline = timed(plain_evaluation)
    budget = AttackBudget(apgd_iterations=args.apgd_iterations,
                              square_queries=args.square_queries)
    protocol = standard_protocol(model, eps=EPS, early_index=3, autoattack=args.autoattack,
                                 budget=budget)
    modes = {"exhaustive": protocol,
             "early_exit": dataclasses.replace(protocol, early_exit=True),
             "screened_early_exit": dataclasses.replace(protocol, early_exit=True,
                                                        screening=Screening())}
    figures: dict = {"samples": args.samples, "defenses": len(protocol.defenses),
                     "attacks": len(protocol.attacks), "pgd_at": args.pgd_at,
                     "autoattack": args.autoattack, "budget": settings_dict(budget),
                     "plain_pgd10_seconds": baseline}
    robust = {}
    for mode, settings in modes.items():
        results, seconds = timed(lambda: run_protocol(settings, model, data, progress=False))
        robust[mode] = {row["label"]: row["robust_samples"] for row in results["defenses"]}
        figures[f"{mode}_seconds"] = seconds
        figures[f"{mode}_ratio"] = seconds / baseline
        figures[f"{mode}_worst_case"] = results["aggregate"]["worst_case"]["robust_accuracy"]
        figures[f"{mode}_verdicts_equal_exhaustive"] = robust[mode] == robust["exhaustive"]
        print(f"{mode}: {seconds:.1f} s ({seconds / baseline:.1f}x one PGD-10 evaluation of "
              f"{baseline:.1f} s), worst case {figures[f'{mode}_worst_case']:.3f}, per-sample "
              f"verdicts equal the exhaustive run's: {robust[mode] == robust['exhaustive']}")
    if args.out:
        write_results(args.out, "protocol_cost", figures)


if __name__ == "__main__":
    main()
