"""Peak memory of one training step against the number N of forward solver iterations.

A ``ConvDEQSettings`` classifier (32 channels, 32x32x3 input downsampled to a 32x16x16 state, so its
cell is ``ConvCell(32, 0.5)``) takes one training step -- forward solve, cross-entropy loss,
backward -- with the ``Phantom``, ``Implicit`` and ``Backprop`` gradient modes, the forward
solver running exactly N steps (``tol=0``; ``record_states=False``, as ``DEQLayer.forward``
does). Phantom and implicit gradients should need memory independent of N; backprop through
the unrolled solve stores every step.

How peak memory is measured:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the step.
* CPU: the kernel's exact high-water mark of the resident set. Before the step the mark is
  reset to the current RSS (``echo 5 > /proc/self/clear_refs``); after it ``VmHWM`` is read
  from ``/proc/self/status``; the figure is VmHWM minus the RSS before the step. The kernel
  updates the mark on every page fault, so no short peak is missed (a sampling thread reading
  ``/proc/self/statm`` can miss one, and it needs the GIL), and it sees torch's CPU tensors,
  which ``tracemalloc`` does not (they do not come from Python's allocator). For RSS to follow
  the live tensors, glibc is set (``mallopt``) to a fixed 128 KiB mmap threshold and trim
  threshold, so every tensor block above 128 KiB is mapped on allocation and unmapped when
  freed; with glibc's default dynamic threshold freed blocks stay resident and later peaks
  read too low. A calibration allocation of known size is measured first and printed.
  ``torch.profiler(profile_memory=True)`` also sees CPU tensors, but reports per-operator
  totals, not the peak, unless its allocator timeline is replayed, and it slows the step;
  replayed (max of "Total Allocated" over its ``[memory]`` trace events) it agreed with this
  meter within 0.3 MiB (phantom and backprop, N = 32, batch 32).

    python benchmarks/gradient_memory.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import report, run_config, save_figure

from deqshield.gradients import Backprop, Implicit, Phantom
from deqshield.models.base import DEQClassifier
from deqshield.models.conv_deq import ConvDEQSettings
from deqshield.solvers import Anderson, Broyden, Picard
from deqshield.solvers.scratch import release_scratch

MiB = 2 ** 20
FLAT_TOLERANCE = 0.10
"""Phantom and implicit peaks may spread by at most 10% over N (the issue's target)."""

MODES = {"phantom": Phantom(), "implicit": Implicit(), "backprop": Backprop()}
SOLVERS = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


class CpuPeakMeter:
    """Peak RSS above the pre-step RSS, from the kernel's resettable high-water mark."""

    name = "VmHWM (kernel peak RSS) with glibc mmap threshold 128 KiB"

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        block = 128 * 1024
        if not (libc.mallopt(M_MMAP_THRESHOLD, block) and libc.mallopt(M_TRIM_THRESHOLD, block)):
            raise RuntimeError("mallopt failed: this meter needs glibc")
        self.reset()

    @staticmethod
    def reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    @staticmethod
    def status(field: str) -> int:
        """A ``kB`` field of /proc/self/status, in bytes."""
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def measure(self, step: Callable[[], None]) -> int:
        release_scratch()  # the step's solver buffers count in its peak, not in the base
        gc.collect()
        base = self.status("VmRSS")
        self.reset()
        step()
        return self.status("VmHWM") - base


class CudaPeakMeter:
    """Peak of torch's CUDA allocator above what was allocated before the step."""

    name = "torch.cuda.max_memory_allocated"

    def __init__(self, device: torch.device):
        self.device = device

    def measure(self, step: Callable[[], None]) -> int:
        gc.collect()
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base


def calibrate(meter: CpuPeakMeter | CudaPeakMeter, device: torch.device) -> float:
    """What the meter reads for a step that only allocates and touches 256 MiB (in MiB)."""
    def step() -> None:
        torch.ones(256 * MiB // 4, device=device)

    return meter.measure(step) / MiB


def build_model(device: torch.device) -> DEQClassifier:
    return ConvDEQSettings(channels=32, downsample=2).build((3, 32, 32), 10).to(device)


def train_step(model: DEQClassifier, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward solve + loss + backward (the optimizer's update adds no N-dependent memory)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def measure_grid(model: DEQClassifier, x: torch.Tensor, y: torch.Tensor, modes: list[str],
                 iters: list[int], solver: str, meter: CpuPeakMeter | CudaPeakMeter,
                 repeats: int) -> dict[str, dict[int, float]]:
    """Median peak (MiB) for every gradient mode and N, after one warm-up step each."""
    peaks: dict[str, dict[int, float]] = {mode: {} for mode in modes}
    for mode in modes:
        model.deq.gradient = MODES[mode]
        for n in iters:
            model.deq.solver = SOLVERS[solver](max_iter=n, tol=0.0)
            step = partial(train_step, model, x, y)
            step()
            peaks[mode][n] = statistics.median(meter.measure(step) for _ in range(repeats)) / MiB
            print(f"  {mode:9s} N = {n:3d}: {peaks[mode][n]:8.1f} MiB", flush=True)
    return peaks


def verdicts(peaks: dict[str, dict[int, float]]) -> dict[str, dict]:
    """Spread (max / min - 1) over N per mode; flat modes must stay within 10%, backprop grows."""
    out = {}
    for mode, by_n in peaks.items():
        values = list(by_n.values())
        spread = max(values) / min(values) - 1
        growth = by_n[max(by_n)] / by_n[min(by_n)]
        ok = growth > 1 + FLAT_TOLERANCE if mode == "backprop" else spread <= FLAT_TOLERANCE
        out[mode] = {"spread": spread, "growth_first_to_last": growth, "pass": ok}
    return out


def print_report(summary: dict) -> None:
    cfg, peaks = summary["config"], summary["peaks_mib"]
    print(f"\npeak memory of one training step (MiB above the pre-step baseline): "
          f"torch {cfg['torch']}, device {cfg['device']}, batch {cfg['batch']}, "
          f"state (32, 16, 16), solver {cfg['solver']} (tol=0), median of {cfg['repeats']}")
    print(f"meter: {cfg['meter']}; calibration: a 256 MiB allocation reads "
          f"{cfg['calibration_mib']:.1f} MiB")
    print(f"{'N':>4s} " + " ".join(f"{mode:>10s}" for mode in peaks))
    for n in cfg["iters"]:
        print(f"{n:4d} " + " ".join(f"{peaks[mode][str(n)]:10.1f}" for mode in peaks))
    for mode, v in summary["verdicts"].items():
        claim = (f"grows x{v['growth_first_to_last']:.2f} from N = {cfg['iters'][0]} to "
                 f"{cfg['iters'][-1]}" if mode == "backprop"
                 else f"spread {100 * v['spread']:.1f}% (flat within 10%)")
        print(f"  {mode:9s} {claim}: {'PASS' if v['pass'] else 'FAIL'}")


def plot(summary: dict, path: Path) -> None:
    """Peak memory against N, one line per gradient mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = summary["config"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, by_n in summary["peaks_mib"].items():
        ax.plot(cfg["iters"], [by_n[str(n)] for n in cfg["iters"]], marker="o", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xticks(cfg["iters"], [str(n) for n in cfg["iters"]])
    ax.set_xlabel("forward solver iterations N")
    ax.set_ylabel("peak memory of a training step (MiB)")
    ax.set_title(f"ConvDEQSettings(32), batch {cfg['batch']}, {cfg['solver']}, {cfg['device']}")
    ax.legend()
    save_figure(fig, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--solver", choices=sorted(SOLVERS), default="anderson",
                        help="forward solver (ConvDEQSettings's default: anderson)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="batch 32, one repeat")
    parser.add_argument("--out", type=Path, help="write gradient_memory.json and .png here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 32, 1
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    meter = CudaPeakMeter(device) if device.type == "cuda" else CpuPeakMeter()
    torch.manual_seed(args.seed)
    model = build_model(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    calibration = calibrate(meter, device)
    peaks = measure_grid(model, x, y, args.modes, args.iters, args.solver, meter,
                         args.repeats)
    summary = {
        "config": run_config(device, batch=args.batch, iters=args.iters, modes=args.modes,
                             solver=args.solver, repeats=args.repeats, meter=meter.name,
                             calibration_mib=calibration),
        "peaks_mib": {mode: {str(n): v for n, v in by_n.items()} for mode, by_n in peaks.items()},
        "verdicts": verdicts(peaks),
    }
    report(summary, print_report, args.out, "gradient_memory", plot)


if __name__ == "__main__":
    main()
