"""Certify a data set with randomized smoothing and report it: per-sample records, certified
accuracy over radii, ``smoothing.json`` and the curve as a PNG.

Certified accuracy at radius r (as reported by Cohen et al. 2019): the fraction of samples whose
CERTIFY answer is the true label with certified radius >= r; abstentions count as errors. It is
a non-increasing step function of r, read off the sorted radii of the correct answers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from torch import Tensor, nn
from tqdm.auto import tqdm

from deqshield.convergence import convergence_tally
from deqshield.io.atomic import replace_atomically
from deqshield.settings import settings_dict
from deqshield.smoothing.records import image_generator
from deqshield.smoothing.sampling import Smoothing
from deqshield.smoothing.smoothed import certify

REPORTED_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


WRITES = ("smoothing.json", "smoothing.png")
"""The files ``deqshield smooth`` writes into its output folder."""


def certify_samples(model: nn.Module, images: Tensor, labels: Tensor, settings: Smoothing,
                    seed: int = 0, progress: bool = False, *,
                    indices: Optional[Sequence[int]] = None,
                    on_record: Optional[Callable[[dict[str, Any]], None]] = None,
                    ) -> list[dict[str, Any]]:
    """CERTIFY the images at ``indices`` (default: all), image i with the noise generator of
    :func:`~deqshield.smoothing.records.image_generator` (``seed``, i), so its record does not
    depend on the other images; one record per image with the answer, radius, bound, counts,
    cell evaluations and ``unconverged_draws`` (draws solved by f whose final residual the
    convergence policy flags; f is then the budgeted solve, which the certificate covers as it
    is), also passed to ``on_record`` as soon as it is made. With
    ``progress``, a progress bar over the images (with its ETA)."""
    chosen = range(images.shape[0]) if indices is None else indices
    records = []
    for index in tqdm(chosen, desc="smooth", unit="image", disable=not progress):
        with convergence_tally() as tally:
            certificate = certify(model, images[index:index + 1], settings,
                                  image_generator(seed, index))
        label = int(labels[index])
        record = {"index": index, "label": label, "prediction": certificate.prediction,
                  "correct": certificate.prediction == label, "radius": certificate.radius,
                  "cell_evaluations": certificate.cell_evaluations,
                  "unconverged_draws": tally.unconverged,
                  **dataclasses.asdict(certificate.bound)}
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def certified_at(record: dict[str, Any], radius: float) -> bool:
    """Whether ``record`` is answered correctly with a certified radius >= ``radius``."""
    return bool(record["correct"]) and record["radius"] >= radius


def certified_accuracy(records: Sequence[dict[str, Any]], radius: float) -> float:
    """Fraction of records answered correctly with a certified radius >= ``radius``."""
    return sum(certified_at(r, radius) for r in records) / max(len(records), 1)


def summarize(records: Sequence[dict[str, Any]], settings: Smoothing, seed: int,
              **context: Any) -> dict[str, Any]:
    """The JSON document: settings (sample counts, alpha), seed, certified accuracy at the
    usual radii, the full curve, mean cell evaluations per image, and the records."""
    largest = max([r["radius"] for r in records] + [0.0])
    grid = [largest * i / 100 for i in range(101)]
    cells = [r["cell_evaluations"] for r in records if r["cell_evaluations"] is not None]
    return {
        **context,
        "settings": settings_dict(settings),
        "seed": seed,
        "samples": len(records),
        "abstained": sum(1 for r in records if r["prediction"] == -1),
        "certified_accuracy": {f"{r:g}": certified_accuracy(records, r) for r in REPORTED_RADII},
        "curve": {"radius": grid, "certified_accuracy": [certified_accuracy(records, r)
                                                         for r in grid]},
        "mean_cell_evaluations": sum(cells) / len(cells) if cells else None,
        "unconverged_draws": sum(r.get("unconverged_draws", 0) for r in records),
        "records": list(records),
    }


def plot_curve(results: dict[str, Any], path: Path, title: str) -> None:
    """Certified accuracy against the l2 radius (a step function) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    curve = results["curve"]
    axes.step(curve["radius"], curve["certified_accuracy"], where="post")
    axes.set_xlabel("l2 radius")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict[str, Any], out_dir: Path,
                 title: Optional[str] = None) -> None:
    """:data:`WRITES` in ``out_dir``: the JSON (written first, atomically), then the plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    replace_atomically(out_dir / WRITES[0], json.dumps(results, indent=2) + "\n")
    sigma = results["settings"]["sigma"]
    plot_curve(results, out_dir / WRITES[1], title or f"sigma = {sigma:g}")
