"""PNG figures for reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def plot_per_state(series: Mapping[str, Sequence[float]], path: Path, *, ylabel: str,
                   title: str, log: bool = False, first_state: int = 0,
                   x_values: Optional[Sequence[float]] = None,
                   xlabel: str = "solver state n (z_n)") -> Path:
    """One line per series over the states z_first, z_first+1, ... (or over ``x_values``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, values in series.items():
        xs = x_values if x_values is not None else range(first_state,
                                                         first_state + len(values))
        ax.plot(list(xs), list(values), marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_matrix(results: Mapping[str, Any], path: Path) -> Path:
    """Heat map of robust accuracy (%) for every defense (rows) x attack (columns)."""
    defenses = results["defenses"]
    attacks = [entry["label"] for entry in results["attacks"]]
    values = [[cell["robust_accuracy"] for cell in row["cells"]] for row in defenses]
    grid = [[float("nan") if v is None else 100 * v for v in row] for row in values]
    fig, ax = plt.subplots(figsize=(3.5 + 0.55 * len(attacks), 2.8 + 0.45 * len(defenses)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), [_short(a) for a in attacks], rotation=60, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(defenses)), [_short(row["label"]) for row in defenses], fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 50 else "black")
    fig.colorbar(image, ax=ax, label="robust accuracy (%)")
    ax.set_title("defense x attack")
    return _save(fig, path)


def _short(label: str, limit: int = 34) -> str:
    return label if len(label) <= limit else label[:limit - 3] + "..."


def plot_bars(values: Mapping[str, Mapping[str, float]], path: Path, *, ylabel: str,
              title: str) -> Path:
    """Grouped bars: one group per outer key, one bar per inner key."""
    groups = list(values)
    names = list(next(iter(values.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(groups), 3.4))
    for k, name in enumerate(names):
        ax.bar([g + k * width for g in range(len(groups))],
               [100 * values[group][name] for group in groups], width, label=name)
    ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path, dpi: Optional[int] = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
