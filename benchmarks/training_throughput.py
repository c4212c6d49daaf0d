"""Robust-training throughput of a DEQ against a same-size CNN, and training-step memory.

1. Step time. A convolutional DEQ (``ConvDEQSettings``, Anderson, phantom gradient) and a
   SmallCNN of about the same parameter count take training steps on one MNIST-sized batch, interleaved
   in one process (median of ``--rounds`` rounds; ratios within the same round), with:
   PGD-AT (``--pgd-steps`` steps), the same with warm-started attack solves (a full solve,
   then ``--warm-steps`` updates per iterate), fast AT (N-FGSM: one step) and free AT (one
   replay = one step). Reported: robust samples per second and the DEQ / CNN time ratio.
   With ``--deq-config`` / ``--cnn-config`` (shipped training configs, e.g. the zoo's) the two
   models are built from them instead, and the recipe "config" is the DEQ config's own
   training objective; ``--recipes`` picks the recipes to time (and skips part 3).
2. Epoch time of a ~100k-parameter DEQ (``--big-channels``) over 60k images: the median step
   time of each recipe times ceil(60000 / batch).
3. Memory: the peak RSS of a PGD-AT step with random intermediate states for N = 8 / 16 / 32
   solver steps (the meter of ``gradient_memory.py``).

    python benchmarks/training_throughput.py [--rounds 5] [--out DIR]
    python benchmarks/training_throughput.py --deq-config src/deqshield/configs/zoo-mnist-linf-0.3-deq.yaml \
        --cnn-config src/deqshield/configs/zoo-mnist-linf-0.3-cnn.yaml --recipes config pgd-at
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from gradient_memory import MiB, CpuPeakMeter
from results_io import write_results

from deqshield.attacks import PGD
from deqshield.io.config import load_config
from deqshield.models import ConvDEQSettings, SmallCNNSettings
from deqshield.solvers import Anderson
from deqshield.training import FastAT, FreeAT, StepRandomness
from deqshield.training.objectives import PGDAT

EPS = 0.3
SHAPE = (1, 28, 28)


def recipes(pgd_steps: int, warm_steps: int, config_objective=None) -> dict[str, object]:
    pgd = PGD(eps=EPS, step_size=2.5 * EPS / pgd_steps, steps=pgd_steps)
    configured = {} if config_objective is None else {"config": config_objective}
    return {**configured, "pgd-at": PGDAT(attack=pgd),
            "pgd-at warm": PGDAT(attack=PGD(eps=EPS, step_size=pgd.step_size, steps=pgd_steps,
                                            warm_steps=warm_steps)),
            "fast-at": FastAT(eps=EPS),
            "free-at (one replay)": FreeAT(eps=EPS)}


def step_function(model: torch.nn.Module, objective, x: torch.Tensor,
                  y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    randomness = StepRandomness(attack=torch.Generator().manual_seed(0))

    def step() -> None:
        model.train()
        output = objective.loss(model, x, y, randomness)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if output.after_backward is not None:
            output.after_backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--cnn-channels", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--big-channels", type=int, default=104)
    parser.add_argument("--pgd-steps", type=int, default=7)
    parser.add_argument("--warm-steps", type=int, default=2)
    parser.add_argument("--deq-config", type=Path, help="build the DEQ from this config")
    parser.add_argument("--cnn-config", type=Path, help="build the CNN from this config")
    parser.add_argument("--recipes", nargs="+", help="time only these recipes")
    parser.add_argument("--memory-only", action="store_true", help="only part 3")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    meter = CpuPeakMeter()  # before any tensor: glibc maps every large block from here on
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, *SHAPE), torch.randint(0, 10, (args.batch,))
    solver = Anderson(max_iter=10, tol=1e-3)
    deq = (load_config(args.deq_config).model if args.deq_config
           else ConvDEQSettings(channels=args.channels, solver=solver))
    cnn = (load_config(args.cnn_config).model if args.cnn_config
           else SmallCNNSettings(channels=tuple(args.cnn_channels)))
    models = {"deq": deq.build(SHAPE, 10), "cnn": cnn.build(SHAPE, 10),
              "deq-100k": dataclasses.replace(deq, channels=args.big_channels).build(SHAPE, 10)}
    objective = load_config(args.deq_config).train.objective if args.deq_config else None
    chosen = recipes(args.pgd_steps, args.warm_steps, objective)
    if args.recipes:
        chosen = {name: chosen[name] for name in args.recipes}
    figures: dict = {"batch": args.batch, "eps": EPS, "threads": torch.get_num_threads(),
                     "configs": [str(args.deq_config), str(args.cnn_config)],
                     "parameters": {name: sum(p.numel() for p in model.parameters())
                                    for name, model in models.items()}, "recipes": {}}
    print(f"parameters: {figures['parameters']}")
    steps_per_epoch = math.ceil(60000 / args.batch)
    for name, objective in ({} if args.memory_only else chosen).items():
        steps = {key: step_function(model, objective, x, y) for key, model in models.items()}
        for step in steps.values():
            step()  # warm-up
        times: dict[str, list[float]] = {key: [] for key in steps}
        for _ in range(args.rounds):
            for key, step in steps.items():
                times[key].append(timed(step))
        ratios = [d / c for d, c in zip(times["deq"], times["cnn"])]
        row = {key: statistics.median(values) for key, values in times.items()}
        row.update(ratio=statistics.median(ratios),
                   deq_samples_per_second=args.batch / row["deq"],
                   cnn_samples_per_second=args.batch / row["cnn"],
                   deq_100k_epoch_minutes=row["deq-100k"] * steps_per_epoch / 60)
        figures["recipes"][name] = row
        print(f"{name}: DEQ {row['deq']:.3f} s, CNN {row['cnn']:.3f} s per step (ratio "
              f"{row['ratio']:.2f}); ~100k-parameter DEQ {row['deq-100k']:.2f} s per step = "
              f"{row['deq_100k_epoch_minutes']:.1f} min per 60k-image epoch")
    if args.recipes:  # a chosen set of recipes: timing only
        if args.out:
            write_results(args.out, "training_throughput_" + "_".join(args.recipes), figures)
        return
    memory = {}
    for n in (8, 16, 32):
        model = ConvDEQSettings(channels=args.channels, solver=Anderson(max_iter=n, tol=0.0)).build(
            SHAPE, 10)
        step = step_function(model, PGDAT(attack=PGD(eps=EPS, step_size=0.1, steps=2),
                                          random_intermediate=True), x, y)
        step()
        memory[n] = statistics.median(meter.measure(step) / MiB for _ in range(3))
    figures["random_intermediate_peak_mib"] = memory
    spread = (max(memory.values()) - min(memory.values())) / max(max(memory.values()), 1e-9)
    figures["random_intermediate_spread"] = spread
    print("PGD-AT step with random intermediate states, peak RSS above the base: "
          + ", ".join(f"N={n}: {mib:.1f} MiB" for n, mib in memory.items())
          + f" (spread {100 * spread:.1f}% of the largest)")
    if args.out:
        write_results(args.out, "training_throughput" + ("_memory" if args.memory_only else ""),
                      figures)


if __name__ == "__main__":
    main()
