"""Inference speed of the entropy-reduction defense over T_f and R (the layout of Table 10 in
regulating-dynamics-icml23): samples per second of the defended prediction, beside the plain
readout, for a convolutional DEQ (random weights: speed does not depend on training).

    python benchmarks/entropy_speed.py [--quick] [--out DIR]

Prints the table and writes ``entropy_speed.json`` and ``entropy_speed.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from results_io import write_results

from deqshield.models import ConvDEQSettings
from deqshield.evaluate.plots import plot_per_state
from deqshield.readouts import EntropyReduction, Final
from deqshield.solvers import Broyden


def samples_per_second(readout, model, x: torch.Tensor, repeats: int) -> float:
    readout.logits(model, x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        readout.logits(model, x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch, one repeat")
    parser.add_argument("--out", type=Path, help="folder for the JSON and PNG")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch, repeats = (16, 1) if args.quick else (128, 3)
    model = ConvDEQSettings(channels=32, downsample=2, solver=Broyden(max_iter=8, tol=0.0)).build(
        (1, 28, 28), 10).eval()
    x = torch.rand(batch, 1, 28, 28)
    intervals, steps = (1, 2, 4, 8), (0, 5, 10, 20)
    plain = samples_per_second(Final(), model, x, repeats)
    table = {t_f: {r: samples_per_second(EntropyReduction(interval=t_f, steps=r), model, x,
                                         repeats) for r in steps} for t_f in intervals}
    print(f"conv DEQ (32 channels, 14x14 state, Broyden 8 steps), batch {batch}, "
          f"{torch.get_num_threads()} threads; samples/s (plain readout: {plain:.1f})")
    print("T_f \\ R " + "".join(f"{r:>10}" for r in steps))
    for t_f, row in table.items():
        print(f"{t_f:>7} " + "".join(f"{row[r]:>10.1f}" for r in steps))
    if args.out:
        figures = {"batch": batch, "plain": plain,
                   "samples_per_second": {str(t): {str(r): v for r, v in row.items()}
                                          for t, row in table.items()}}
        write_results(args.out, "entropy_speed", figures, lambda path: plot_per_state(
            {f"T_f = {t_f}": [row[r] for r in steps] for t_f, row in table.items()}, path,
            ylabel="samples / s", title="entropy reduction: inference speed", x_values=steps,
            xlabel="R (input steps per intervention)"))


if __name__ == "__main__":
    main()
