"""Where the benchmarks write their figures: OUT/NAME.json and, with a plot, OUT/NAME.png."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


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
