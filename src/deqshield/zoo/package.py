"""``deqshield zoo add``: package a finished run as a zoo model.

The run's best checkpoint (latest if it has none) is loaded into its model with deqshield's
checkpoint loader and the model's state dict is written as ``weights.safetensors``, beside the
run's ``config.yaml`` and a ``card.json`` filled from the run and its measurements:

* from ``results.json`` of ``deqshield evaluate`` (docs/results-schema.md), the row of the
  defense the evaluation reports as best in ``aggregate.worst_case.defense``: its
  ``clean_accuracy``, ``worst_case_accuracy``, ``min_over_attacks`` and, as the AutoAttack
  accuracy, the lowest of its APGD cells (columns whose label starts with ``APGD``);
* from ``certify.json`` of ``deqshield certify``: ``accuracy.certified`` (and its clean and PGD
  accuracy, ``samples`` and ``certified_broken_by_pgd`` under ``results["certify"]``).

* from ``smoothing.json`` of ``deqshield smooth``, for a smoothed model (l2 threat model,
  named as :mod:`deqshield.zoo.cards` says): the smoothing record and the figures it fixes
  (:mod:`deqshield.zoo.smoothing_figures`); a smoothed model's card records nothing else.

At least one of them is needed. The model folder is written in a staging folder and renamed
into place, so a failed packaging leaves no half-written model.

``deqshield zoo update NAME --evaluation DIR`` (:func:`update_evaluation`) replaces a shipped
model's evaluation figures by a re-evaluation of its own weights (``deqshield evaluate
zoo:NAME``), keeping its weights, training record and certification; ``--smoothing DIR``
(:func:`update_smoothing`) replaces a smoothed model's smoothing record by a new certification
of its own weights (``deqshield smooth zoo:NAME``, e.g. on more images); :func:`record_check`
records an outside check of the evaluation or the reference AutoAttack on the test images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import safetensors.torch
import yaml

from deqshield import __version__
from deqshield.io import atomic
from deqshield.io.config import ExperimentConfig, dump_config
from deqshield.errors import InputError, OutputError
from deqshield.data.base import split_name
from deqshield.io.runs import ZOO_PREFIX, RunPath, load_run
from deqshield.io.weights import tensor_copies
from deqshield.zoo import store
from deqshield.zoo.cards import (Architecture, Card, OutsideCheck, ReferenceAutoAttack, Solver,
                                  Training, card_json, check_name)
from deqshield.zoo.slices import slice_predictions
from deqshield.zoo.smoothing_figures import (
    check_certified_checkpoint,
    check_certified_weights,
    smoothing_figures,
)

APGD_PREFIX = "APGD"


def add_run(run_dir: RunPath, name: str, *, config_file: str,
            evaluation: Optional[Path] = None, certification: Optional[Path] = None,
            smoothing: Optional[Path] = None, wall_time: Optional[float] = None,
            machine: str = "", notes: Sequence[str] = (), evaluate_command: str = "",
            data_dir: Optional[str] = None, processes: int = 1, force: bool = False) -> Card:
    """Package the run in ``run_dir`` as zoo model ``name`` (see the module docstring) and
    return its card. ``config_file`` names the shipped config (``src/deqshield/configs/``)
    the retrain command uses; ``evaluation``, ``certification`` and ``smoothing`` are the
    folders holding the measurements (see the module docstring); ``data_dir`` overrides the
    run's data root (the model is built for the shape of its test data); ``processes`` > 1:
    the run was trained under ``torchrun`` with that many processes (a config's batch size is
    per process), and so is the retrain command. An existing model is replaced only with
    ``force``."""
    check_name(name)
    target = store.root() / name
    if target.exists() and not force:
        raise OutputError(f"zoo model {name} exists in {store.root()}; pass --force to "
                          "replace it")
    if Path(config_file).name != config_file or not (
            files("deqshield") / "configs" / config_file).is_file():
        raise InputError(f"--config-file {config_file} is not a shipped config in "
                         "src/deqshield/configs/")
    if evaluation is None and certification is None and smoothing is None:
        raise InputError("give the run's measurements: --evaluation DIR (results.json) "
                         "and/or --certification DIR (certify.json), or --smoothing DIR "
                         "(smoothing.json)")
    if smoothing is not None and (evaluation is not None or certification is not None):
        raise InputError("a smoothed model's card records its --smoothing certification "
                         "only, not --evaluation or --certification")
    if smoothing is None and not evaluate_command:
        raise InputError("give --evaluate-command: the command that produced the measurements "
                         "(the card's re-evaluation command)")
    figures: dict[str, Any] = {"results": {}, "attack_budgets": {}}
    for folder, file, read in ((evaluation, "results.json", evaluation_figures),
                               (certification, "certify.json", certification_figures)):
        if folder is not None:
            figures = _merge(figures, _figures(Path(folder) / file, read))
    run = load_run(run_dir, data_dir=data_dir)
    if smoothing is not None:
        def read(results: dict[str, Any]) -> dict[str, Any]:
            check_certified_checkpoint(results, run, run_dir)
            return smoothing_figures(results, name, run.config.model.name, run.test.name)

        figures = _figures(Path(smoothing) / "smoothing.json", read)
    config, model = run.config, run.model
    solver = getattr(config.model, "solver", None)
    weights = safetensors.torch.save(tensor_copies(model))
    card = Card(
        name=name, dataset=config.data.name,
        threat_model="L2" if smoothing is not None else "Linf",
        input_shape=run.test.input_shape, num_classes=run.test.num_classes,
        architecture=Architecture(model=config.model.name, description=describe(config)),
        parameters=sum(p.numel() for p in model.parameters()),
        solver=(Solver(name=solver.name, max_iter=solver.max_iter, tol=solver.tol)
                if solver is not None else None),
        cell_evaluations_per_prediction=solver.max_iter if solver is not None else None,
        training=Training(config_file=config_file, objective=config.train.objective.name,
                          step=run.checkpoint.step, epoch=run.checkpoint.epoch),
        training_wall_time_seconds=wall_time, training_machine=machine,
        deqshield_version=__version__, sha256=store.sha256_of_bytes(weights),
        retrain_command=retrain_command(name, config_file, processes),
        evaluate_command=evaluate_command, notes=tuple(notes),
        slice_predictions=slice_predictions(model, config.data.name), **figures)
    _publish(target, {store.WEIGHTS: weights,
                      store.CONFIG: yaml.safe_dump(dump_config(config), sort_keys=False).encode(),
                      store.CARD: card_json(card).encode()})
    return card


def retrain_command(name: str, config_file: str, processes: int = 1) -> str:
    """The command that retrains zoo model ``name`` from the shipped ``config_file`` on
    ``processes`` processes."""
    launcher = ("deqshield" if processes == 1
                else f"torchrun --nproc_per_node {processes} -m deqshield")
    return (f"{launcher} train src/deqshield/configs/{config_file} --out runs/{name} "
            "--data-dir DATA")


def update_evaluation(name: str, evaluation: Path, *, evaluate_command: str = "",
                      notes: Sequence[str] = ()) -> Card:
    """Replace the evaluation figures of zoo model ``name`` by those of ``results.json`` in
    ``evaluation``, which must come from ``deqshield evaluate zoo:NAME`` at the card's radius;
    ``evaluate_command`` and ``notes`` replace the card's when given. Returns the new card."""
    card = store.card(name)
    if card.smoothing is not None:
        raise InputError(f"{name} is a smoothed model: its card records a smoothing "
                         "certification, not an evaluation")
    path = Path(evaluation) / "results.json"
    run = _figures(path, lambda results: results["meta"]["run"])
    if run != f"{ZOO_PREFIX}{name}":
        raise InputError(f"{path} evaluates {run}, not {ZOO_PREFIX}{name}")
    figures = _figures(path, evaluation_figures)
    if f"{figures['eps']:.6g}" != f"{card.eps:.6g}":
        raise InputError(f"{path} is at eps {figures['eps']:g}, the card's model at "
                         f"eps {card.eps:g}")
    updated = dataclasses.replace(
        card, **{key: value for key, value in figures.items()
                 if key not in ("results", "attack_budgets")},
        results={**card.results, **figures["results"]},
        attack_budgets={**card.attack_budgets, **figures["attack_budgets"]},
        evaluate_command=evaluate_command or card.evaluate_command,
        notes=tuple(notes) or card.notes, deqshield_version=__version__, outside_check=None,
        reference_autoattack=None)
    _republish(updated)
    return updated


def record_check(name: str, *, notes: Sequence[str] = (),
                 outside_check: Optional[OutsideCheck] = None,
                 reference_autoattack: Optional[ReferenceAutoAttack] = None) -> Card:
    """Record an outside check of zoo model ``name``'s evaluation and/or the reference
    AutoAttack on its test images (:class:`~deqshield.zoo.cards.OutsideCheck`,
    :class:`~deqshield.zoo.cards.ReferenceAutoAttack`), replacing any earlier one of the same
    kind; ``notes`` replace the card's when given. Returns the new card."""
    card = store.card(name)
    changes = {key: value for key, value in (("outside_check", outside_check),
                                             ("reference_autoattack", reference_autoattack))
               if value is not None}
    updated = dataclasses.replace(card, **changes, notes=tuple(notes) or card.notes)
    _republish(updated)
    return updated


def update_smoothing(name: str, smoothing: Path, *, notes: Sequence[str] = ()) -> Card:
    """Replace the smoothing record (and the figures it fixes) of smoothed zoo model ``name``
    by ``smoothing.json`` in ``smoothing``, which must certify ``zoo:NAME``'s own weights;
    ``notes`` replace the card's when given. Returns the new card."""
    card = store.card(name)
    if card.smoothing is None:
        raise InputError(f"{name} is not a smoothed model: update it with --evaluation")
    model, _ = store.load(name)

    def read(results: dict[str, Any]) -> dict[str, Any]:
        check_certified_weights(results, name, model)
        return smoothing_figures(results, name, store.config(name).model.name,
                                 split_name(card.dataset, "test"))

    figures = _figures(Path(smoothing) / "smoothing.json", read)
    updated = dataclasses.replace(
        card, **{key: value for key, value in figures.items()
                 if key not in ("results", "attack_budgets")},
        notes=tuple(notes) or card.notes, deqshield_version=__version__)
    _republish(updated)
    return updated


def update_text(name: str, notes: Sequence[str] = (), evaluate_command: str = "") -> Card:
    """Replace the notes and/or the evaluate command of zoo model ``name`` (figures, weights
    and config kept): for what a card must say before a new measurement is done, e.g. that one
    is under way, or a command recorded wrong. Returns the new card."""
    if not notes and not evaluate_command:
        raise InputError("give the card's new notes (--note, repeatable) and/or its "
                         "--evaluate-command")
    card = store.card(name)
    if evaluate_command and card.smoothing is not None:
        raise InputError(f"{name} is a smoothed model: its command is its smoothing record's")
    updated = dataclasses.replace(card, notes=tuple(notes) or card.notes,
                                  evaluate_command=evaluate_command or card.evaluate_command)
    _republish(updated)
    return updated


def _republish(card: Card) -> None:
    """Write ``card`` over its model's card, keeping the weights and config."""
    folder = store.model_dir(card.name)
    _publish(folder, {file: (folder / file).read_bytes() for file in (store.WEIGHTS,
                                                                       store.CONFIG)}
             | {store.CARD: card_json(card).encode()})


def evaluation_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Card fields from ``results.json``: the best defense's row (see the module docstring)."""
    best = results["aggregate"]["worst_case"]["defense"]
    row = next(entry for entry in results["defenses"] if entry["label"] == best)
    apgd = {cell["attack"]: cell["robust_accuracy"] for cell in row["cells"]
            if cell["attack"].startswith(APGD_PREFIX)}
    measured = [value for value in apgd.values() if value is not None]
    return {
        "eps": results["protocol"]["eps"], "test_images": results["samples"],
        "clean_accuracy": row["clean_accuracy"],
        "worst_case_accuracy": row["worst_case_accuracy"],
        "min_over_attacks": row["min_over_attacks"],
        "autoattack_accuracy": min(measured) if measured else None,
        "attack_budgets": {"evaluate": {attack["label"]: attack["attack"]
                                        for attack in results["attacks"]}},
        "results": {"evaluate": {"defense": best, "min_max": results["aggregate"]["min_max"],
                                 "apgd": apgd}},
    }


def certification_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Card fields from ``certify.json``; its clean accuracy and sample count fill the card's
    only where no evaluation was given."""
    accuracy = results["accuracy"]
    return {
        "eps": results["eps"], "test_images": results["samples"],
        "clean_accuracy": accuracy["clean"], "certified_accuracy": accuracy["certified"],
        "attack_budgets": {"certify": {"attack": results["attack"]}},
        "results": {"certify": {"clean_accuracy": accuracy["clean"],
                                "pgd_accuracy": accuracy["pgd"],
                                "samples": results["samples"],
                                "certified_broken_by_pgd": results["certified_broken_by_pgd"]}},
    }


def describe(config: ExperimentConfig) -> str:
    """A short description of the model: its name and scalar settings."""
    settings = dump_config(config)["model"]
    details = ", ".join(f"{key} {value}" for key, value in settings.items()
                        if key != "name" and not isinstance(value, dict))
    solver = settings.get("solver")
    solver_text = f", {solver['name']} solver" if isinstance(solver, dict) else ""
    return f"{settings['name']} ({details}{solver_text})"


def _merge(figures: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``figures`` with ``more`` added: the first source's scalars win, and both agree on eps."""
    if "eps" in figures and figures["eps"] != more["eps"]:
        raise InputError(f"the evaluation (eps {figures['eps']:g}) and the certification "
                         f"(eps {more['eps']:g}) are at different radii")
    merged = {**more, **figures}
    for mapping in ("results", "attack_budgets"):
        merged[mapping] = {**figures[mapping], **more[mapping]}
    return merged


def _figures(path: Path, read: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """``read`` applied to the JSON file ``path``; :class:`InputError` if it is missing or
    lacks what ``read`` needs."""
    try:
        return read(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path.parent} holds no {path.name}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON: {error}") from None
    except (KeyError, TypeError, StopIteration) as error:
        raise InputError(f"{path} lacks what deqshield writes there "
                         f"({type(error).__name__}: {error})") from None


def _publish(target: Path, contents: dict[str, bytes]) -> None:
    """Write ``contents`` durably into a staging folder beside ``target``, then replace
    ``target`` by it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for file, data in contents.items():
        atomic.write_durably(staging / file, data)
    atomic.fsync_directory(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    atomic.fsync_directory(target.parent)
