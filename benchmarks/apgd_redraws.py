"""How much a robustness figure depends on APGD's random draw: the protocol's own APGD-CE/T
column (``AutoAttackBridge`` fed one gradient path, scored by one defense) re-run on chosen
samples with seeds 0..S-1, printing which samples each seed breaks and the union.

Run it on the samples an outside check broke while the evaluation counted them robust (read
from independent_attack.json files): if few seeds break them again, the evaluation's miss was
the draw, not a blind spot of the protocol's paths, and more draws (``deqshield evaluate
--apgd-restarts``) are the remedy.

    python benchmarks/apgd_redraws.py zoo:mnist-linf-0.3-deq --eps 0.3 --defense "early(index=7)" \\
        --depth 7 --seeds 4 --from CHECK/independent_attack.json [--from ...] --data-dir $MNIST
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.evaluate.matrix import materialize
from deqshield.evaluate.specs import defense_label
from deqshield.io.runs import load_run
from deqshield.paths.unrolled import UnrolledIntermediate
from deqshield.readouts import Early, Ensemble, Final
from results_io import run_config, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--defense", default="final",
                        help="final, ensemble or early(index=DEPTH), as results.json labels it")
    parser.add_argument("--depth", type=int, required=True,
                        help="the path: backpropagation through this many plain iterations")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--from", dest="checks", type=Path, action="append", required=True,
                        help="independent_attack.json: its samples broken while counted robust")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, help="folder for apgd_redraws.json")
    args = parser.parse_args()
    readouts = {defense_label(r): r for r in (Final(), Ensemble(), Early(index=args.depth))}
    if args.defense not in readouts:
        parser.error(f"--defense must be one of {sorted(readouts)}, got {args.defense!r}")
    readout = readouts[args.defense]
    checks = [json.loads(check.read_text())["defenses"] for check in args.checks]
    if any(args.defense not in check for check in checks):
        parser.error(f"a --from file has no defense {args.defense!r}")
    samples = sorted({i for check in checks for i in check[args.defense]["broken_robust"]})
    if not samples:
        parser.error(f"the checks broke no sample counted robust for {args.defense}")
    run = load_run(args.run, data_dir=args.data_dir)
    model = run.model.eval()
    x, y = materialize(run.test.subset(samples, "redrawn"))
    path = UnrolledIntermediate(index=0, steps=args.depth, damping=1.0)
    union = torch.zeros(len(y), dtype=torch.bool)
    per_seed = {}
    for seed in range(args.seeds):
        bridge = AutoAttackBridge(attacks=("apgd-ce", "apgd-t"), eps=args.eps, seed=seed)
        result = bridge.run(model, path, x, y, defenses=(readout,))
        broken = result.broken[0]
        union |= broken
        per_seed[seed] = [s for s, b in zip(samples, broken.tolist()) if b]
        print(f"seed {seed}: breaks {len(per_seed[seed])} of {len(samples)}: {per_seed[seed]}",
              flush=True)
    found = [s for s, b in zip(samples, union.tolist()) if b]
    print(f"all {args.seeds} seeds: {len(found)} of {len(samples)}: {found}")
    if args.out:
        write_results(args.out, "apgd_redraws", {
            "config": run_config(x.device, **vars(args) | {
                "checks": [str(c) for c in args.checks], "out": str(args.out)}),
            "samples": samples, "per_seed": per_seed, "union": found})


if __name__ == "__main__":
    main()
