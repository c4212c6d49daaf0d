"""Cost of the full white-box protocol relative to one plain PGD-10 evaluation, with and
without the early exit (samples already broken for a defense are not attacked again).

A small convolutional DEQ is trained on the scikit-learn digits for a few epochs (standard
training, so that attacks break samples and the early exit has work to skip), then timed:

* one ready-made PGD-10 evaluation of the final readout;
* ``standard_protocol`` (defenses final / early / ensemble, the papers' attack set, no
  AutoAttack unless ``--autoattack``), exhaustive and with the early exit; the per-sample
  verdicts of the two runs are compared (they must agree).

    python benchmarks/protocol_cost.py [--samples 100] [--autoattack] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from results_io import write_results
from torch.utils.data import Subset

from deqshield.attacks import PGD
from deqshield.data import load_dataset
from deqshield.models import ConvDEQ
from deqshield.paths import FinalState
from deqshield.protocol import AttackSpec, evaluate_matrix
from deqshield.protocol.standard import standard_protocol
from deqshield.readouts import Final
from deqshield.solvers import Broyden
from deqshield.training import fit

EPS = 0.1


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--autoattack", action="store_true", help="include APGD and Square")
    parser.add_argument("--out", type=Path, help="folder for protocol_cost.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = ConvDEQ(channels=16, downsample=1, solver=Broyden(max_iter=8, tol=1e-4)).build(
        train.input_shape, 10)
    fit(model, train, epochs=4, batch_size=64, lr=3e-3, progress=False)
    data = Subset(test, range(args.samples))
    plain = AttackSpec(attack=PGD(eps=EPS, step_size=EPS / 4, steps=10), path=FinalState())
    _, baseline = timed(lambda: evaluate_matrix(model, data, [Final()], [plain],
                                                progress=False))
    protocol = standard_protocol(model, eps=EPS, early_index=3, autoattack=args.autoattack)
    specs, defenses = protocol.attack_specs(), list(protocol.defenses)
    full, exhaustive = timed(lambda: evaluate_matrix(model, data, defenses, specs,
                                                     progress=False))
    early, early_exit = timed(lambda: evaluate_matrix(model, data, defenses, specs,
                                                      early_exit=True, progress=False))
    agree = all(bool((full.robust(d) == early.robust(d)).all()) for d in full.defenses)
    figures = {"samples": args.samples, "defenses": len(defenses), "attacks": len(specs),
               "plain_pgd10_seconds": baseline, "protocol_seconds": exhaustive,
               "protocol_early_exit_seconds": early_exit,
               "ratio_exhaustive": exhaustive / baseline, "ratio_early_exit": early_exit / baseline,
               "verdicts_agree": agree}
    print(f"{args.samples} samples, {len(defenses)} defenses x {len(specs)} attacks")
    print(f"plain PGD-10 evaluation: {baseline:.1f} s")
    print(f"full protocol: {exhaustive:.1f} s ({figures['ratio_exhaustive']:.1f}x); "
          f"with early exit: {early_exit:.1f} s ({figures['ratio_early_exit']:.1f}x); "
          f"per-sample verdicts agree: {agree}")
    if args.out:
        write_results(args.out, "protocol_cost", figures)


if __name__ == "__main__":
    main()
