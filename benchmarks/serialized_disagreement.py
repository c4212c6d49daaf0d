"""Where the serialized (warm-started) smoothing chain h and the smoothed model f part ways: for
each test image, ``--draws`` Gaussian draws are classified both by the warm chain
(:class:`deqshield.smoothing.serialized.WarmChain`, ``--warm-steps`` K; the first batch of
``--batch`` draws cold, the others warm) and by f (the model's own cold solve, or one with
``--solver-steps`` iterations instead of the model's budget). It
counts the disagreements the sound certificate must charge for (h = c_A, f != c_A, with c_A
f's top class) and how confident h was on them (top-1 minus top-2 softmax probability of the
warm readout): a disagreement at a high margin cannot be found by re-solving only the chain's
low-margin draws.

    python benchmarks/serialized_disagreement.py RUN --sigma S [--warm-steps K] [--chained]
        [--solver-steps N] [--start I] [--limit L] [--draws D] [--data-dir D] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from results_io import run_config, write_results

from deqshield.io.runs import load_run
from deqshield.readouts import Final
from deqshield.smoothing.sampling import base_predictions, noisy_batches
from deqshield.smoothing.serialized import WarmChain

MARGINS = (0.1, 0.3, 0.5)


def image_figures(model, x: torch.Tensor, args, generator: torch.Generator) -> dict:
    """Counts of one image's draws: f's top class, h's and f's counts of it, the
    disagreements, and those among draws where h's margin is at least each of MARGINS."""
    chain = WarmChain(model, Final(), args.warm_steps, chained=args.chained)
    warm, margin, cold = [], [], []
    for noisy in noisy_batches(x, args.draws, args.sigma, args.batch, generator):
        top2 = chain.logits(noisy).softmax(dim=1).topk(2, dim=1)
        warm.append(top2.indices[:, 0])
        margin.append(top2.values[:, 0] - top2.values[:, 1])
        cold.append(base_predictions(model, Final(), noisy))
    warm, margin, cold = torch.cat(warm), torch.cat(margin), torch.cat(cold)
    top = int(torch.bincount(cold, minlength=model.num_classes).argmax())
    disagree = (warm == top) & (cold != top)
    return {"top": top, "f_count": int((cold == top).sum()), "h_count": int((warm == top).sum()),
            "disagreements": int(disagree.sum()),
            "confident_disagreements": {str(m): int((disagree & (margin >= m)).sum())
                                        for m in MARGINS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sigma", type=float, required=True)
    parser.add_argument("--warm-steps", type=int, default=2)
    parser.add_argument("--chained", action="store_true",
                        help="warm-start each batch from the previous one (SRS's chain)")
    parser.add_argument("--solver-steps", type=int, help="f's solver iterations (model's own)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    loaded = load_run(args.run, data_dir=args.data_dir)
    model = loaded.model
    if args.solver_steps:
        model.deq.solver = dataclasses.replace(model.deq.solver, max_iter=args.solver_steps)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    images = {}
    for index in range(args.start, args.start + args.limit):
        images[index] = image_figures(model, loaded.test.images[index:index + 1], args, generator)
        print(index, images[index], flush=True)
    total = {key: sum(f[key] for f in images.values())
             for key in ("f_count", "h_count", "disagreements")}
    total["confident_disagreements"] = {str(m): sum(f["confident_disagreements"][str(m)]
                                                    for f in images.values()) for m in MARGINS}
    total["draws"] = args.draws * args.limit
    print("total", total)
    write_results(args.out, "serialized_disagreement",
                  {"config": run_config(torch.device("cpu"), **vars(args) | {
                      "run": str(args.run), "out": str(args.out)}),
                   "total": total, "images": images,
                   "seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
