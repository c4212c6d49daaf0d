"""Certified, clean and PGD accuracy of a trained certifiable model (CerDEQ Table 6 layout)
and its bound-growth curve (CerDEQ Fig. 3); ``deqshield certify RUN`` is a thin wrapper over
:func:`certify_run`. On the test split (first
``limit`` examples), with the run's best checkpoint (latest if it has none) in eval mode:

* clean accuracy: the model answers (every DEQ residual <= delta) and predicts y;
* PGD accuracy: the same at x' = PGD-k(x) (final-state gradient, step 2.5 eps / k, l_inf eps,
  ``pgd_restarts`` random starts; x' is the first misclassified iterate of any restart);
* certified accuracy: :func:`deqshield.certify.certify` proves that every x' in the clipped
  eps-box is classified y or abstained on.

An abstention counts as an error everywhere. Soundness is checked on the spot: a certified
sample whose PGD example is answered with another label is counted as
``certified_broken_by_pgd`` (must be 0).

Bound growth (Fig. 3): the mean radius of the output bound before the classifier divided by
the mean radius of the input box, against the number of interval iterations per DEQ layer N
(:func:`~deqshield.certify.unrolled_interval` in every layer) or, for the explicit CNN-7,
against the depth (post-activation boxes). The N-iteration box bounds the N-th Picard iterate
only; it says something about the equilibrium the model returns only once the interval
iteration has converged, which is what the certified equilibrium box (the adjoint DEQ's
bound widened by the remaining fixed-point error, drawn as a dashed line) accounts for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from deqshield.attacks.pgd import PGD
from deqshield.certify import (CNN7, CerDEQ, CertifiableClassifier, Interval, certify,
                               input_box, propagate, unrolled_interval)
from deqshield.io.atomic import replace_atomically
from deqshield.data import ArrayDataset
from deqshield.errors import InputError
from deqshield.paths import FinalState
from deqshield.readouts import Final
from deqshield.sharding import current_shard
from deqshield.io.runs import RunPath, load_run, output_dir, run_config
from deqshield.training.objectives import Certified
from deqshield.validation import INPUT_RANGE, check_eps, check_number

WRITES = ("certify.json", "certify.md", "bound_growth.png")
"""The files ``deqshield certify`` writes into its output folder."""


def certify_run(run_dir: RunPath, *, out: Optional[RunPath] = None,
                limit: Optional[int] = None, eps: Optional[float] = None, pgd_steps: int = 20,
                pgd_restarts: int = 3,
                batch_size: int = 256, data_dir: Optional[str] = None,
                curve_samples: int = 64, curve_iterations: int = 30, seed: int = 0,
                progress: bool = False) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` (or ``zoo:NAME``) and write :data:`WRITES`
    (``certify.json``, ``certify.md``, ``bound_growth.png``) into ``out`` (default:
    ``run_dir``); returns the JSON content. ``eps`` defaults to the certified objective's
    ``certified_eps`` (its test radius, else its training target); ``progress`` shows a
    progress bar over the samples. Under ``torchrun`` each
    process certifies its share of the samples and only rank 0 draws the bound-growth curve
    and writes."""
    out_dir = output_dir(run_dir, out)
    config = run_config(run_dir)
    objective = config.train.objective
    clip = objective.weights.clip if isinstance(objective, Certified) else (0.0, 1.0)
    if eps is None:
        if not isinstance(objective, Certified):
            raise InputError("the run was not trained with the certified objective: pass eps")
        eps = objective.certified_eps
    check_eps(eps, clip or INPUT_RANGE, name="eps")
    if limit is not None:
        check_number("limit", limit, minimum=1, integer=True)
    run = load_run(run_dir, data_dir=data_dir)
    data, model, info = run.test, run.model, run.checkpoint
    if limit is not None:
        data = data.subset(range(min(limit, len(data))), f"{data.name}[:{limit}]")
    if not isinstance(model, CertifiableClassifier):
        raise InputError(f"model {config.model.name!r} is not certifiable (cerdeq, cnn7)")
    attack = PGD(eps=eps, step_size=2.5 * eps / max(pgd_steps, 1), steps=pgd_steps,
                 restarts=pgd_restarts, bounds=clip or (0.0, 1.0))
    counts, samples = evaluate_certified(model, data, eps, clip, attack, batch_size, seed,
                                         progress)
    n = counts.pop("samples")
    accuracy = {key: counts[key] / max(n, 1) for key in ("clean", "pgd", "certified")}
    results: dict[str, Any] = {
        "run": str(run_dir), "checkpoint": str(info.path), "step": info.step,
        "model": config.model.name, "parameters": sum(p.numel() for p in model.parameters()),
        "data": data.name, "samples": n, "eps": eps, "clip": clip,
        "attack": f"PGD-{pgd_steps} (l_inf, step {attack.step_size:.4g}, {pgd_restarts} random "
                  "start(s), final-state gradient, first misclassified iterate kept)",
        "accuracy": accuracy,
        "error_percent": {"standard": 100 * (1 - accuracy["clean"]),
                          "certified": 100 * (1 - accuracy["certified"]),
                          "pgd": 100 * (1 - accuracy["pgd"])},
        "abstained_clean": counts["abstained"],
        "certified_broken_by_pgd": counts["broken"],
        "contractions": model.contractions() if isinstance(model, CerDEQ) else [],
        "per_sample": samples,
    }
    if not current_shard().is_main:
        return results
    results["bound_growth"] = bound_growth(model, data.images[:curve_samples], eps, clip,
                                           curve_iterations)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file, markdown_file, plot_file = WRITES
    replace_atomically(out_dir / json_file, json.dumps(results, indent=2) + "\n")
    replace_atomically(out_dir / markdown_file, markdown_report(results))
    plot_bound_growth(results["bound_growth"], out_dir / plot_file,
                      f"{config.model.name}, eps = {eps:g}")
    return results


COUNTED = ("clean", "pgd", "certified", "abstained", "broken")
"""The per-sample flags :func:`evaluate_certified` counts."""


def evaluate_certified(model: CertifiableClassifier, data: ArrayDataset, eps: float,
                       clip: Optional[tuple[float, float]], attack: PGD, batch_size: int,
                       seed: int, progress: bool = False
                       ) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Counts over ``data`` (samples, clean / PGD / certified correct, clean abstentions, and
    certified samples whose PGD example gets another, non-abstained, label) and the per-sample
    records (those flags and the certified margin min_j (logit_y - logit_j) lower bound). PGD
    keeps the first misclassified example over its iterates and restarts; its random starts
    are drawn for the whole set from ``seed`` before the work is split, so under ``torchrun``
    (:mod:`deqshield.sharding`: each process its share of the samples, records merged) every
    sample gets the start one process would give it."""
    shard = current_shard()
    starts = attack.starts(data.images, torch.Generator().manual_seed(seed))
    owned = torch.nonzero(shard.owns(len(data))).flatten()
    samples: list[dict[str, Any]] = []
    bar = tqdm(total=len(owned), desc="certify", unit="sample",
               disable=not (progress and shard.is_main))
    for batch in owned.split(batch_size):
        x, y = data.images[batch], data.labels[batch]
        with torch.no_grad():
            clean = model.predict(x)
        certified, margins = certify(model, x, y, eps, clip)
        witness = attack.run(model, FinalState(), x, y, defenses=(Final(),),
                             start=None if starts is None else starts[:, batch]).witnesses[0]
        with torch.no_grad():
            adversarial = model.predict(witness)
        broken = certified & (adversarial != y) & (adversarial != -1)
        margin = margins.scatter(1, y[:, None], float("inf")).min(dim=1).values
        samples += [{"index": int(batch[i]), "label": int(y[i]),
                     "clean": bool(clean[i] == y[i]), "abstained": bool(clean[i] == -1),
                     "pgd": bool(adversarial[i] == y[i]), "certified": bool(certified[i]),
                     "broken": bool(broken[i]), "certified_margin": float(margin[i])}
                    for i in range(len(y))]
        bar.update(len(y))
    bar.close()
    samples = sorted(shard.gather(samples), key=lambda record: record["index"])
    counts = {"samples": len(samples),
              **{flag: sum(record[flag] for record in samples) for flag in COUNTED}}
    return counts, samples


def _relative_width(box: Interval, reference: Tensor) -> float:
    return float(box.radius.mean() / reference)


@torch.no_grad()
def bound_growth(model: CertifiableClassifier, x: Tensor, eps: float,
                 clip: Optional[tuple[float, float]], iterations: int) -> dict[str, Any]:
    """Relative output-bound width (see module docstring) for the inputs ``x`` in eval mode.

    CerDEQ: ``steps`` = 1..iterations interval iterations per DEQ layer, and ``certified``
    the relative width of the sound equilibrium box. CNN-7: ``steps`` = 1..6 (depth) and no
    ``certified`` entry (every box is already sound)."""
    box = input_box(x, eps, clip)
    reference = box.radius.mean()
    if isinstance(model, CerDEQ):
        widths = []
        for steps in range(1, iterations + 1):
            state = box
            for layer in model.layers:
                injection = propagate(layer.extractor, state)
                state = unrolled_interval(layer.fusion.operator(), injection, steps)
            widths.append(_relative_width(state, reference))
        equilibrium = box
        for layer in model.layers:
            equilibrium = layer.interval(equilibrium)
        return {"axis": "interval iterations per DEQ layer",
                "steps": list(range(1, iterations + 1)), "relative_width": widths,
                "certified": _relative_width(equilibrium, reference)}
    if isinstance(model, CNN7):
        trace: list[Interval] = []
        propagate(model.features, box, trace)
        widths = [_relative_width(pre.map(torch.relu), reference) for pre in trace]
        return {"axis": "depth (layers)", "steps": list(range(1, len(widths) + 1)),
                "relative_width": widths, "certified": None}
    raise InputError(f"no bound-growth curve for {type(model).__name__}")


def plot_bound_growth(curve: dict[str, Any], path: Path, title: str) -> None:
    """The curve of :func:`bound_growth` as a PNG (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot(curve["steps"], curve["relative_width"], marker="o", markersize=3,
              label="bound after N steps")
    if curve["certified"] is not None:
        axes.axhline(curve["certified"], linestyle="--", color="black",
                     label="certified equilibrium bound")
    axes.set_yscale("log")
    axes.set_xlabel(curve["axis"])
    axes.set_ylabel("output / input bound width")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_report(results: dict[str, Any]) -> str:
    """The Table 6 layout (errors in %) and the soundness check, as Markdown."""
    errors = results["error_percent"]
    curve = results["bound_growth"]
    lines = [
        f"# Certification of {results['run']}", "",
        f"{results['samples']} test samples of {results['data']}, l_inf eps = "
        f"{results['eps']:g}, checkpoint {results['checkpoint']} (step {results['step']}); "
        f"attack {results['attack']}.", "",
        "| Model | Parameters | Stand-Err | Cert-Err | PGD-Err |",
        "|---|---:|---:|---:|---:|",
        f"| {results['model']} | {results['parameters']:,} | {errors['standard']:.2f}% | "
        f"{errors['certified']:.2f}% | {errors['pgd']:.2f}% |", "",
        f"Clean abstentions: {results['abstained_clean']}. Certified samples broken by the "
        f"attack: {results['certified_broken_by_pgd']} (must be 0).", "",
        f"Bound growth ({curve['axis']}): relative width "
        + ", ".join(f"{w:.3g}" for w in curve["relative_width"][:10])
        + (" ..." if len(curve["relative_width"]) > 10 else "")
        + (f"; certified equilibrium bound {curve['certified']:.3g}"
           if curve["certified"] is not None else "")
        + " (bound_growth.png).", "",
    ]
    return "\n".join(lines)
