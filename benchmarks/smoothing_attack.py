"""Soundness check of randomized-smoothing certificates on a trained run: the smoothed l2
attack (:func:`deqshield.smoothing.broken_certificates`, SmoothAdv-style PGD on the mean softmax
over fixed noise draws) against each correctly certified image of a ``smoothing.json``, at
``--factor`` times its certified radius. At factor 1 no image may be broken (up to alpha);
a larger factor shows that the attack has teeth.

    python benchmarks/smoothing_attack.py RUN RUN/smoothing.json [--start S] [--limit N]
        [--factor F] [--n N] [--data-dir D] [--out DIR]

``--start S --limit N`` attacks the correctly certified images number S to S + N - 1 (in test
set order), so that a long check can be split in parts.

PREDICT at the adversarial point uses ``--n`` independent draws (alpha = 0.001).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from results_io import write_results

from deqshield.io.runs import load_run
from deqshield.smoothing import Certificate, LowerBound, Smoothing, broken_certificates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results = json.loads(args.report.read_text())
    loaded = load_run(args.run, data_dir=args.data_dir)
    settings = Smoothing(sigma=results["settings"]["sigma"], n=args.n, batch=args.n)
    certified = [r for r in results["records"] if r["correct"] and r["radius"] > 0]
    chosen = certified[args.start:args.start + args.limit]
    x = torch.cat([loaded.test.images[r["index"]:r["index"] + 1] for r in chosen])
    certificates = [Certificate(r["prediction"], args.factor * r["radius"],
                                LowerBound(r["p_lower"], r["count"], r["samples"]), None)
                    for r in chosen]
    started = time.perf_counter()
    broken = broken_certificates(loaded.model, x, certificates, settings, draws=16, steps=10,
                                 generator=torch.Generator().manual_seed(0), progress=True)
    figures = {"run": str(args.run), "report": str(args.report), "factor": args.factor,
               "first_certified_image": args.start, "certified_images": len(chosen),
               "broken": broken,
               "mean_attack_radius": sum(c.radius for c in certificates) / max(len(chosen), 1),
               "seconds": time.perf_counter() - started}
    print(f"{broken} of {len(chosen)} certified images broken at {args.factor:g} x radius")
    write_results(args.out, "smoothing_attack", figures)


if __name__ == "__main__":
    main()
