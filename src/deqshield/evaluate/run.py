"""``deqshield evaluate``: the full white-box evaluation of a trained DEQ.

1. the early-state index is chosen on the development split by robustness under ready-made
   PGD-10 (closer-look-neurips22 Sec. 5.2), unless given;
2. diagnostics of the neural dynamics: per-state clean and robust accuracy under the
   ready-made attack (the robustness-accumulation curve, Fig. 2a), relative error per state
   (Fig. 2b), prediction entropy per state, the relative deviation of perturbed from clean
   trajectories (regulating-dynamics Fig. 3c) and, with the entropy defense, its entropy change
   per state (Fig. 3b);
3. the defense x attack matrix of :func:`deqshield.evaluate.standard.standard_protocol`, its
   min-max and per-sample worst-case aggregates and obfuscation flags;
4. ``results.json``, ``report.md`` and PNG plots in the output folder.

Under ``torchrun`` every process evaluates its shard of the test samples and holds the merged
table (:mod:`deqshield.sharding`); only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from deqshield.attacks.pgd import READY_MADE
from deqshield.data import dev_split, load_dataset
from deqshield.evaluate.diagnostics import (
    adversarial_dataset,
    dynamics_deviation,
    entropy_change,
    robustness_accumulation,
)
from deqshield.errors import InputError
from deqshield.models import DEQClassifier
from deqshield.evaluate.plots import plot_matrix, plot_per_state
from deqshield.evaluate.protocol import run_protocol
from deqshield.evaluate.report import write_report, write_results
from deqshield.evaluate.selection import select_early_index
from deqshield.sharding import current_shard
from deqshield.evaluate.journal import Journal, evaluation_records, journaling
from deqshield.evaluate.specs import AttackSpec, Screening, describe
from deqshield.evaluate.standard import (
    AttackBudget,
    explicit_protocol,
    redundant_early,
    standard_protocol,
)
from deqshield.readouts import EntropyReduction
from deqshield.io.runs import RunPath, load_run, output_dir
from deqshield.io.weights import weights_digest
from deqshield.settings import settings_dict
from deqshield.solvers import swapped_solver
from deqshield.validation import check_eps, check_index, check_number



def _first(data: Dataset, count: Optional[int]) -> Dataset:
    return data if count is None else Subset(data, range(min(count, len(data))))


def evaluate_model(model: nn.Module, test: Dataset, dev: Optional[Dataset], out_dir: Path, *,
                   eps: float, early_index: Optional[int] = None, limit: Optional[int] = None,
                   sweep: bool = False, entropy: Optional[EntropyReduction] = None,
                   autoattack: bool = True, quick: bool = False, early_exit: bool = False,
                   seed: int = 0, progress: bool = True, dev_limit: int = 200,
                   keep: Optional[Callable[[AttackSpec], bool]] = None,
                   budget: AttackBudget = AttackBudget(),
                   screening: Optional[Screening] = None,
                   meta: Optional[dict[str, Any]] = None,
                   resume: bool = False) -> dict[str, Any]:
    """Run steps 1-4 of the module docstring and return the results mapping (an explicit
    network gets its output attacked by PGD-10, APGD and Square instead). The early
    index is selected on the first ``dev_limit`` dev samples; ``keep`` keeps only the columns
    of the standard attack set it is true for (all by default); ``screening`` ranks the attacks
    on a few samples first (:mod:`deqshield.evaluate.screening`). Every attacked batch is
    journaled in ``out_dir`` until the results are written; ``resume`` replays the journal of
    an interrupted evaluation of the same model with the same settings
    (:mod:`deqshield.evaluate.journal`)."""
    check_eps(eps, name="eps")
    if limit is not None:
        check_number("limit", limit, minimum=1, integer=True)
    model.eval()
    test = _first(test, limit)
    options = dict(eps=eps, autoattack=autoattack, quick=quick, early_exit=early_exit,
                   seed=seed, budget=budget, screening=screening)
    header = {"weights_sha256": weights_digest(model),
              "solver": describe(model.deq.solver) if isinstance(model, DEQClassifier) else None,
              "samples": len(test),  # type: ignore[arg-type]
              "settings": _settings({**options, "entropy": entropy, "early_index": early_index,
                                     "sweep": sweep, "dev_limit": dev_limit,
                                     "all_columns": keep is None})}
    journal = evaluation_records(out_dir)
    records = journal.load(header) if resume else []
    with journal.log(current_shard().rank, header, resume) as log, \
            journaling(Journal(records, log)):
        if isinstance(model, DEQClassifier):
            results = _evaluate_deq(model, test, dev, eps=eps, early_index=early_index,
                                    sweep=sweep, entropy=entropy, keep=keep,
                                    dev_limit=dev_limit, meta=meta, progress=progress,
                                    options=options)
        else:
            results = run_protocol(explicit_protocol(**options), model, test, meta=meta,
                                   progress=progress)
    if not current_shard().is_main:
        return results
    write_results(out_dir / "results.json", results)  # first: a failing plot loses nothing
    results["plots"] = _plots(results, out_dir)
    write_report(out_dir, results)
    journal.remove()
    return results


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    """The options as JSON values (settings objects as mappings)."""
    return {name: settings_dict(value) if dataclasses.is_dataclass(value) else value
            for name, value in options.items()}


def _evaluate_deq(model: DEQClassifier, test: Dataset, dev: Optional[Dataset], *, eps: float,
                  early_index: Optional[int], sweep: bool, entropy: Optional[EntropyReduction],
                  keep: Optional[Callable[[AttackSpec], bool]], dev_limit: int,
                  meta: Optional[dict[str, Any]], progress: bool,
                  options: dict[str, Any]) -> dict[str, Any]:
    """Steps 1-3 of the module docstring for a DEQ."""
    steps = model.deq.solver.max_iter
    seed = options["seed"]
    ready_made = READY_MADE.at_radius(eps)
    scores: dict[int, float] = {}
    if early_index is not None:
        check_index("early_index", early_index, steps)
    elif dev is None:
        raise InputError("the run has no development split (dev_fraction 0) to choose the "
                         "early state on; pass --early-index")
    else:
        early_index, scores = select_early_index(model, _first(dev, dev_limit),
                                                 range(1, steps + 1),
                                                 attack=ready_made, seed=seed)
    diagnostics = robustness_accumulation(model, test, ready_made, seed=seed)
    probe = _first(test, 256)
    x = torch.stack([probe[i][0] for i in range(len(probe))])
    adversarial = adversarial_dataset(model, probe, ready_made, seed=seed).tensors[0]
    diagnostics["trajectory_deviation"] = dynamics_deviation(model, x, adversarial)
    if entropy is not None:
        diagnostics["entropy_change_clean"] = entropy_change(model, entropy, x)
        diagnostics["entropy_change_adversarial"] = entropy_change(model, entropy, adversarial)
    diagnostics["early_index"] = early_index
    diagnostics["early_selection"] = {str(k): v for k, v in scores.items()}
    protocol = standard_protocol(model, early_index=early_index, sweep=sweep, entropy=entropy,
                                 **options)
    if keep is not None:
        protocol = dataclasses.replace(protocol, attacks=tuple(filter(keep, protocol.attacks)))
    results = run_protocol(protocol, model, test, meta=meta, progress=progress)
    results["notes"] += [note for note in (redundant_early(model, early_index),) if note]
    results["diagnostics"] = diagnostics
    return results


def _plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """The PNG plots of the results (the matrix; a DEQ's diagnostics too); their file names."""
    matrix = plot_matrix(results, out_dir / "defense_attack_matrix.png")
    if "diagnostics" not in results:
        return [matrix.name]
    diagnostics = results["diagnostics"]
    figures = [
        plot_per_state({"clean": diagnostics["clean_accuracy"],
                        "ready-made PGD-10": diagnostics["robust_accuracy"]},
                       out_dir / "robustness_accumulation.png", ylabel="accuracy",
                       title="accuracy per state (robustness accumulation)"),
        plot_per_state({"clean": diagnostics["relative_residual"],
                        "perturbed": diagnostics["robust_relative_residual"]},
                       out_dir / "relative_error.png", ylabel="||f(z)-z|| / ||f(z)||",
                       title="relative error per state", log=True),
        plot_per_state({"clean": diagnostics["clean_entropy"],
                        "perturbed": diagnostics["robust_entropy"]},
                       out_dir / "entropy.png", ylabel="prediction entropy",
                       title="prediction entropy per state"),
        plot_per_state({"perturbed vs clean": diagnostics["trajectory_deviation"]},
                       out_dir / "trajectory_deviation.png", ylabel="||z~_n - z_n|| / ||z_n||",
                       title="deviation of the perturbed dynamics", first_state=1),
        matrix,
    ]
    if "entropy_change_clean" in diagnostics:
        figures.append(plot_per_state(
            {"clean": diagnostics["entropy_change_clean"],
             "perturbed": diagnostics["entropy_change_adversarial"]},
            out_dir / "entropy_change.png", ylabel="Delta H(z_n)",
            title="entropy change by the defense", first_state=1))
    return [figure.name for figure in figures]


def evaluate_run(run_dir: RunPath, out_dir: Optional[Path] = None, *,
                 which: Literal["best", "latest"] = "best", data_dir: Optional[str] = None,
                 solver: Optional[str] = None, **options: Any) -> dict[str, Any]:
    """Load a run written by ``deqshield train`` (or ``zoo:NAME``) and evaluate it (see
    :func:`evaluate_model`) into ``out_dir`` (default: ``run_dir/evaluation``).
    ``solver`` swaps the test-time solver (keeping every setting the two share, see
    :func:`~deqshield.solvers.swapped_solver`), e.g. ``broyden`` to enable the
    simultaneous-adjoint attacks: the figures then describe the model with that solver."""
    run = load_run(run_dir, which=which, data_dir=data_dir)
    model = run.model
    if solver is not None and isinstance(model, DEQClassifier):
        model.deq.solver = swapped_solver(model.deq.solver, solver)
    data = run.config.data
    dev = None
    if data.dev_fraction > 0:  # the run's own split: its dev part was never trained on
        full = load_dataset(data.name, "train", data_dir or data.root, data.download)
        _, dev = dev_split(full, data.dev_fraction, seed=data.seed)
    meta = {"run": str(run_dir), "checkpoint": str(run.checkpoint.path),
            "step": run.checkpoint.step, "model": run.config.model.name}
    if isinstance(model, DEQClassifier):
        meta["solver"] = model.deq.solver.name
    return evaluate_model(model, run.test, dev, output_dir(run_dir, out_dir, "evaluation"),
                          meta=meta, **options)
