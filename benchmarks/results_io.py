"""Where the benchmarks write their figures: OUT/NAME.json and, with a plot, OUT/NAME.png;
and the ``config`` record that says how a run was made."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def write_results(out: Path, name: str, figures: dict,
                  plot: Callable[[Path], None] | None = None) -> None:
    """Write ``figures`` as ``out/name.json`` and call ``plot(out/name.png)`` if given."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json"]
    written[0].write_text(json.dumps(figures, indent=2))
    if plot is not None:
        written.append(out / f"{name}.png")
        plot(written[1])
    print("\nwrote " + " and ".join(str(path) for path in written))


def run_config(device: torch.device, **settings: Any) -> dict[str, Any]:
    """A benchmark run's ``config`` record: torch version, device and intra-op threads, then
    ``settings`` (the run's options and measurement set-up), then the command line."""
    return {"torch": torch.__version__, "device": str(device),
            "threads": torch.get_num_threads(), **settings, "command": " ".join(sys.argv)}


def report(summary: dict, show: Callable[[dict], None], out: Path | None, name: str,
           plot: Callable[[dict, Path], None]) -> None:
    """Print ``summary`` with ``show``; with ``out``, also write it as ``out/name.json`` and
    its plot ``plot(summary, out/name.png)``."""
    show(summary)
    if out:
        write_results(out, name, summary, lambda path: plot(summary, path))


def save_figure(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` at 120 dpi and close it (the caller has chosen
    matplotlib's backend)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
