"""Solver overhead: an N-step solve against N bare evaluations of the cell.

On ``ConvCell(32, init_scale)`` (f(z, u) = GN(ReLU(Conv3x3(z) + u))) with a random injection
u of shape (batch, 32, 16, 16), this times, interleaved round-robin and after a warm-up:

* N bare cell evaluations in a Python loop (the reference);
* deqshield's Picard, Anderson (memory 5) and Broyden with ``tol=0`` (all N steps run),
  ``record_states=False`` and ``final_residual=False`` (exactly N evaluations of f), and the
  default ``final_residual=True`` (N + 1 evaluations);
* the history traffic alone: for each of the N steps, the low-rank products a solver cannot
  avoid (Anderson: the Gram row over h = min(n + 1, m) residuals and the mix of h values of f;
  Broyden: B_n g and B_n^T dz over k = n rank-one terms), without the cell or anything else.
  1 + (its time / the bare evaluations) is the floor an N-step solve with that algorithm and
  memory can reach with these products on this machine;
* torchdeq's ``fixed_point_iter``, ``anderson_solver`` and ``broyden_solver`` at N iterations
  with ``tol=0`` and ``return_final=True``, when torchdeq is importable.

Every case counts its evaluations of f and reports the mean relative residual
||f(z) - z|| / ||f(z)|| of the state it returns (computed after timing, for every case the
same way), so torchdeq and deqshield are compared at equal evaluations *and* residual
(torchdeq's Broyden makes N + 1 evaluations for N iterations, so it meets deqshield's
``final_residual=True``).

The machine may be shared: every timing of a case is paired with a timing of the bare
evaluations run next to it, and a case's ratio is the median over rounds of its paired
ratios. ``torch.set_num_threads`` is left at its default (printed).

On CPU, glibc returns large freed blocks to the kernel, so a tensor allocation may page-fault
fresh memory in; how often depends on the allocation pattern of what ran before, which makes
the bare loop and the solvers pay unequal, varying fault costs. ``--resident-heap`` tells
glibc (``mallopt``) to serve blocks up to 32 MiB from a heap it never trims, so after the
warm-up nothing faults and the ratios measure the solvers' own work; the default keeps
glibc's behaviour (what a user gets).

    python benchmarks/solver_overhead.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from results_io import report, run_config, save_figure
from torch import Tensor

from deqshield.models.conv_deq import ConvCell
from deqshield.solvers import Anderson, Broyden, FixedPointSolver, Picard

TARGETS = {"picard": 1.15, "anderson": 1.15, "broyden": 1.3}
"""The issue's targets for (N-step solve time) / (N bare cell evaluations)."""

ANDERSON_MEMORY = 5
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
BUSY_SPREAD = 1.2
"""A bare-evaluation median this much above its minimum flags a busy machine."""
SOLVER_CLASSES = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}


class CountingMap:
    """z -> cell(z, u), counting its calls (an integer increment: negligible next to f)."""

    def __init__(self, cell: ConvCell, u: Tensor):
        self.cell, self.u, self.calls = cell, u, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.cell(z, self.u)


@dataclass
class Case:
    """One timed configuration; ``run`` returns the final state (shape of u)."""

    label: str
    group: str
    solver: str
    run: Callable[[], Tensor]
    evals: int = 0
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    residual: float = float("nan")
    final: Tensor | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        """Median over rounds of this case's time / the bare evaluations timed just before."""
        return statistics.median(self.ratios) if self.ratios else 1.0


def relative_residual(f: Callable[[Tensor], Tensor], z: Tensor) -> float:
    """Batch mean of ||f(z) - z|| / ||f(z)||."""
    fz = f(z).flatten(1)
    flat = z.flatten(1)
    return float(((fz - flat).norm(dim=1) / fz.norm(dim=1)).mean())


def bare_case(f: CountingMap, z0: Tensor, iters: int) -> Case:
    def run() -> Tensor:
        z = z0
        for _ in range(iters):
            z = f(z)
        return z

    return Case(f"cell x{iters}", "bare", "", run)


def solver_kwargs(name: str, iters: int, final_residual: bool) -> dict:
    kwargs = {"max_iter": iters, "tol": 0.0, "final_residual": final_residual}
    return kwargs | ({"memory": ANDERSON_MEMORY} if name == "anderson" else {})


def deqshield_case(name: str, f: CountingMap, z0: Tensor, iters: int,
                   final_residual: bool) -> Case:
    solver: FixedPointSolver = SOLVER_CLASSES[name](**solver_kwargs(name, iters, final_residual))
    label = f"deqshield {name}" + (" (final_residual)" if final_residual else "")
    return Case(label, "deqshield" + ("+final" if final_residual else ""), name,
                lambda: solver.solve(f, z0, record_states=False).final)


def history_traffic_cases(z0: Tensor, iters: int) -> list[Case]:
    """The unavoidable low-rank products of N Anderson and N Broyden steps, nothing else."""
    flat = z0.reshape(z0.shape[0], -1)
    x = torch.randn_like(flat)
    memory = torch.randn(flat.shape[0], max(ANDERSON_MEMORY, iters), flat.shape[1],
                         dtype=flat.dtype, device=flat.device)
    other = torch.randn_like(memory)

    def product(left: Tensor, right: Tensor, k: int) -> Tensor:
        coeff = torch.bmm(x[:, None], right[:, :k].transpose(1, 2))
        return torch.bmm(coeff, left[:, :k])

    def anderson() -> Tensor:
        for n in range(iters):
            h = min(n + 1, ANDERSON_MEMORY)
            torch.bmm(x[:, None], memory[:, :h].transpose(1, 2))  # Gram row
            out = torch.bmm(x[:, None, :h], other[:, :h])  # mix (weights stand-in)
        return out

    def broyden() -> Tensor:
        for n in range(1, iters):
            product(memory, other, n)  # B_n g_{n+1}
            out = product(other, memory, n)  # B_n^T dz
        return out

    return [Case("history traffic anderson", "floor", "anderson", anderson),
            Case("history traffic broyden", "floor", "broyden", broyden)]


def torchdeq_cases(f: CountingMap, z0: Tensor, iters: int) -> list[Case]:
    """torchdeq's three solvers at ``iters`` iterations, or [] when it is not importable."""
    try:
        from torchdeq.solver import get_solver
    except ImportError:
        print("torchdeq is not installed: skipping the torchdeq comparison "
              "(install it with `pip install --no-deps torchdeq`)")
        return []
    common = {"max_iter": iters, "tol": 0.0, "stop_mode": "rel", "return_final": True}
    specs = {"picard": ("fixed_point_iter", {}), "anderson": ("anderson", {"m": ANDERSON_MEMORY}),
             "broyden": ("broyden", {})}
    cases = []
    for name, (key, extra) in specs.items():
        solve = get_solver(key)
        kwargs = common | extra
        cases.append(Case(f"torchdeq {key}", "torchdeq", name,
                          lambda solve=solve, kwargs=kwargs: solve(f, z0, **kwargs)[0]))
    return cases


def build_cases(f: CountingMap, z0: Tensor, iters: int) -> list[Case]:
    cases = [bare_case(f, z0, iters)]
    for final in (False, True):
        cases += [deqshield_case(name, f, z0, iters, final) for name in TARGETS]
    return cases + history_traffic_cases(z0, iters) + torchdeq_cases(f, z0, iters)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Tensor], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def measure(cases: list[Case], f: CountingMap, repeats: int, warmup: int,
            device: torch.device) -> None:
    """Count evaluations and residuals, warm up, then time every case ``repeats`` times.

    Each timing of a case is paired with a timing of the bare evaluations right before or
    after it (alternating, so neither side always inherits the other's allocator and cache
    state), and the ratio of the pair is recorded: a slow phase of the shared machine then
    inflates both sides of a pair. Cases run round-robin with a rotating start."""
    for case in cases:
        before = f.calls
        case.final = case.run()
        case.evals = f.calls - before
        if case.group != "floor":
            case.residual = relative_residual(lambda z: f.cell(z, f.u), case.final)
    for _ in range(warmup):
        for case in cases:
            case.run()
    bare, others = cases[0], cases[1:]
    for r in range(repeats):
        for i in range(len(others)):
            case = others[(i + r) % len(others)]
            pair = (bare, case) if (i + r) % 2 else (case, bare)
            for member in pair:
                member.times.append(timed(member.run, device))
            case.ratios.append(case.times[-1] / bare.times[-1])


def case_row(case: Case, bare: Case, iters: int) -> dict:
    """The figures of one case; ``ratio`` is relative to the bare N evaluations."""
    return {"label": case.label, "group": case.group, "solver": case.solver,
            "evals": case.evals, "median_ms": 1e3 * case.median,
            "min_ms": 1e3 * min(case.times), "ratio": case.ratio,
            "ratio_of_minima": min(case.times) / min(bare.times),
            "ratio_per_eval": case.ratio * iters / case.evals if case.evals else None,
            "rel_residual": case.residual,
            "times_ms": [1e3 * t for t in case.times], "ratios": case.ratios}


def find(cases: list[Case], groups: tuple[str, ...], solver: str,
         evals: int | None = None) -> Case | None:
    """The first case of one of ``groups`` for ``solver`` (with ``evals`` evaluations)."""
    return next((c for c in cases if c.group in groups and c.solver == solver
                 and (evals is None or c.evals == evals)), None)


def verdicts(cases: list[Case]) -> dict:
    """PASS/FAIL of each solver against its target, with the history-traffic floor."""
    out = {}
    for name, target in TARGETS.items():
        ours = find(cases, ("deqshield",), name)
        floor = find(cases, ("floor",), name)
        out[name] = {"target": target, "ratio": ours.ratio, "pass": ours.ratio <= target,
                     "floor": 1.0 + floor.ratio if floor else 1.0}
    return out


def torchdeq_comparison(cases: list[Case]) -> dict:
    """Each torchdeq solver against deqshield's at equal evaluations,
    compared through their ratios to the bare evaluations (robust to a shared machine)."""
    out = {}
    for theirs in (c for c in cases if c.group == "torchdeq"):
        ours = find(cases, ("deqshield", "deqshield+final"), theirs.solver, theirs.evals)
        out[theirs.solver] = {
            "evals": theirs.evals, "torchdeq": theirs.label, "torchdeq_ratio": theirs.ratio,
            "torchdeq_ms": 1e3 * theirs.median, "torchdeq_rel_residual": theirs.residual,
            "deqshield": ours.label, "deqshield_ratio": ours.ratio,
            "deqshield_ms": 1e3 * ours.median, "deqshield_rel_residual": ours.residual,
            "deqshield_faster": ours.ratio < theirs.ratio}
    return out


def print_report(summary: dict) -> None:
    cfg = summary["config"]
    print(f"deqshield solver overhead: torch {cfg['torch']}, device {cfg['device']}, "
          f"{cfg['threads']} threads, batch {cfg['batch']}, state {tuple(cfg['state'])}, "
          f"N = {cfg['iters']}, {cfg['repeats']} interleaved rounds after {cfg['warmup']} "
          f"warm-up rounds, {'resident heap' if cfg['resident_heap'] else 'default glibc heap'}")
    print("ratio: median over rounds of (case time / time of the bare evaluations run next "
          "to it); per eval: ratio x N / evals; min/min: fastest case / fastest bare")
    print(f"{'case':38s} {'evals':>5s} {'median ms':>9s} {'min ms':>8s} {'ratio':>6s} "
          f"{'per eval':>8s} {'min/min':>7s} {'rel. residual':>13s}")
    for row in summary["cases"]:
        if row["group"] == "floor":
            print(f"{row['label']:38s} {'-':>5s} {row['median_ms']:9.2f} "
                  f"{row['min_ms']:8.2f} {row['ratio']:6.3f}")
            continue
        print(f"{row['label']:38s} {row['evals']:5d} {row['median_ms']:9.2f} "
              f"{row['min_ms']:8.2f} {row['ratio']:6.3f} {row['ratio_per_eval']:8.3f} "
              f"{row['ratio_of_minima']:7.3f} {row['rel_residual']:13.4e}")
    bare = summary["cases"][0]
    if bare["median_ms"] > BUSY_SPREAD * bare["min_ms"]:
        print(f"WARNING: the bare evaluations' median is {bare['median_ms'] / bare['min_ms']:.2f}x "
              "their minimum: the machine was busy during this run; re-run when it is idle")
    print(f"\ntargets: {cfg['iters']}-step solve (final_residual=False) / "
          f"{cfg['iters']} bare cell evaluations")
    for name, v in summary["targets"].items():
        print(f"  {name:9s} {v['ratio']:6.3f} <= {v['target']:.2f}  "
              f"{'PASS' if v['pass'] else 'FAIL'}   (history-traffic floor {v['floor']:.3f})")
    if summary["torchdeq"]:
        print("\ntorchdeq at equal evaluations of f (ratio to the bare evaluations, median ms, "
              "mean relative residual of the returned state):")
    for name, v in summary["torchdeq"].items():
        print(f"  {name:9s} {v['evals']} evals: {v['deqshield']} {v['deqshield_ratio']:.3f} "
              f"({v['deqshield_ms']:.1f} ms, res {v['deqshield_rel_residual']:.4e}) vs "
              f"{v['torchdeq']} {v['torchdeq_ratio']:.3f} ({v['torchdeq_ms']:.1f} ms, "
              f"res {v['torchdeq_rel_residual']:.4e}): deqshield "
              f"{'faster' if v['deqshield_faster'] else 'SLOWER'}")


def plot(summary: dict, path: Path) -> None:
    """Horizontal bars of each case's ratio to the bare evaluations, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["cases"]
    colors = {"bare": "grey", "deqshield": "tab:blue", "deqshield+final": "lightsteelblue",
              "floor": "tab:green", "torchdeq": "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.barh([r["label"] for r in rows], [r["ratio"] for r in rows],
            color=[colors[r["group"]] for r in rows])
    for x, style in ((1.15, "--"), (1.3, ":")):
        ax.axvline(x, color="red", linestyle=style, label=f"target {x}")
    ax.invert_yaxis()
    cfg = summary["config"]
    ax.set_xlabel(f"time / ({cfg['iters']} bare cell evaluations)")
    heap = ", resident heap" if cfg["resident_heap"] else ""
    ax.set_title(f"ConvCell(32) batch {cfg['batch']}, N = {cfg['iters']}, "
                 f"{cfg['threads']} threads ({cfg['device']}{heap})")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=8, help="solver steps N")
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--init-scale", type=float, default=0.5,
                        help="ConvCell init_scale (ConvDEQSettings's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resident-heap", action="store_true",
                        help="keep freed memory resident (glibc mallopt), see above")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="batch 32, 5 repeats, 1 warm-up round")
    parser.add_argument("--out", type=Path, help="write solver_overhead.json and .png here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.warmup = 32, 5, 1
    return args


def keep_heap_resident() -> None:
    """Serve blocks up to 32 MiB (glibc's maximum mmap threshold) from a heap that is trimmed
    only above 1 GiB of free memory at its top."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not (libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)
            and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 30)):
        raise RuntimeError("mallopt failed: --resident-heap needs glibc")


def main() -> None:
    args = parse_args()
    if args.resident_heap:
        keep_heap_resident()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cell = ConvCell(32, args.init_scale).to(device).eval()
    u = torch.randn(args.batch, 32, 16, 16, device=device)
    f = CountingMap(cell, u)
    with torch.no_grad():
        cases = build_cases(f, cell.initial_state(u), args.iters)
        measure(cases, f, args.repeats, args.warmup, device)
    summary = {
        "config": run_config(device, batch=args.batch, state=list(u.shape[1:]),
                             iters=args.iters, repeats=args.repeats, warmup=args.warmup,
                             init_scale=args.init_scale, seed=args.seed,
                             resident_heap=args.resident_heap),
        "cases": [case_row(c, cases[0], args.iters) for c in cases],
        "targets": verdicts(cases),
        "torchdeq": torchdeq_comparison(cases),
    }
    report(summary, print_report, args.out, "solver_overhead", plot)


if __name__ == "__main__":
    main()
