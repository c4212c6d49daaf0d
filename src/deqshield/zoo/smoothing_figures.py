"""Card fields from ``smoothing.json`` of ``deqshield smooth`` (``deqshield zoo add
--smoothing DIR``): the smoothing record (:mod:`deqshield.zoo.smoothed`) and the card figures
it fixes (clean and certified accuracy, test images, eps from the model's name).

The packaged weights must be the ones certified: ``smoothing.json`` records the run and the
checkpoint it loaded, which must be the checkpoint the packager loads (``zoo add``), or the zoo
model and the sha256 of its weights (``zoo update``); its model and test data must be the
run's. Radii above the largest that its n and alpha can certify (where the
certified accuracy is 0 by construction) are left out of the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch.nn import Module

from deqshield.errors import InputError
from deqshield.io.runs import LoadedRun, RunPath
from deqshield.io.weights import weights_digest
from deqshield.smoothing.sampling import Smoothing
from deqshield.zoo.cards import check_name
from deqshield.zoo.smoothed import SmoothingRecord, largest_radius, smoothing_command

_SETTINGS = TypeAdapter(Smoothing)


def smoothing_figures(results: dict[str, Any], name: str, model: str,
                      test: str) -> dict[str, Any]:
    """Card fields of zoo model ``name`` from ``results`` (``smoothing.json``) of a run of
    ``model`` (a model name) with test split ``test`` (e.g. ``mnist/test``), whose weights the
    caller checked; :class:`InputError` if they were measured on another model or test set,
    or do not certify the name's radius."""
    images = results["samples"]
    data = f"{test}[:{images}]"
    if (results["model"], results["data"]) != (model, data):
        raise InputError(f"the smoothing certified {results['model']} on {results['data']}, "
                         f"not the run's {model} on {data}")
    try:
        settings = _SETTINGS.validate_json(json.dumps(results["settings"]))
    except ValidationError as error:
        raise InputError(f"invalid smoothing settings: {error}") from None
    largest = largest_radius(settings)
    try:
        accuracy = {radius: value for radius, value in results["certified_accuracy"].items()
                    if float(radius) <= largest}
    except ValueError:
        raise InputError("certified_accuracy is keyed by something other than radii: "
                         f"{list(results['certified_accuracy'])}") from None
    eps = float(check_name(name)["eps"])
    if f"{eps:g}" not in accuracy:
        raise InputError(f"the name's radius {eps:g} is not one the smoothing certified "
                         f"(radii up to {largest:.3f}: {', '.join(accuracy)})")
    try:
        record = SmoothingRecord(
            settings=settings, seed=results["seed"], test_images=images,
            abstained=results["abstained"], certified_accuracy=accuracy,
            cell_evaluations_per_image=results["mean_cell_evaluations"],
            seconds=results["seconds"],
            command=smoothing_command(name, settings, images, results["seed"]))
    except ValidationError as error:
        raise InputError(f"the smoothing results are not a valid record: {error}") from None
    return {"eps": eps, "test_images": images, "clean_accuracy": accuracy["0"],
            "certified_accuracy": accuracy[f"{eps:g}"], "smoothing": record,
            "attack_budgets": {}, "results": {}}


def check_certified_checkpoint(results: dict[str, Any], run: LoadedRun,
                               run_dir: RunPath) -> None:
    """:class:`InputError` unless the checkpoint ``results`` records (as a path under its run
    folder, or an absolute one) is the one ``run`` was loaded from."""
    recorded, loaded = Path(results["checkpoint"]), Path(run.checkpoint.path)
    try:
        same = recorded.relative_to(results["run"]) == loaded.relative_to(run_dir)
    except ValueError:
        same = recorded.resolve() == loaded.resolve()
    if not same:
        raise InputError(f"the smoothing certified checkpoint {recorded}, but the run's "
                         f"packaged checkpoint is {loaded}: certify the packaged one")


def check_certified_weights(results: dict[str, Any], name: str, model: Module) -> None:
    """:class:`InputError` unless ``results`` certified ``zoo:NAME`` with the weights ``model``
    holds (by the sha256 of the state dict that ``deqshield smooth`` records)."""
    if results["run"] != f"zoo:{name}":
        raise InputError(f"the smoothing certified {results['run']}, not zoo:{name}")
    if results.get("weights_sha256") != weights_digest(model):
        raise InputError(f"the smoothing certified other weights than zoo:{name}'s (or "
                         "predates the weights' sha256 in smoothing.json): certify the zoo "
                         "model again")
