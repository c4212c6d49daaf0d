"""``results.json`` (schema: docs/results-schema.md) and ``report.md`` (Tables 2-3 layout)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from deqshield.io.atomic import replace_atomically
from deqshield.evaluate.flags import Flag
from deqshield.evaluate.specs import AttackSpec, Protocol
from deqshield.evaluate.verdicts import BROKEN, SKIPPED, SURVIVED, UNTESTED, VerdictTable
from deqshield.settings import settings_dict

SCHEMA_VERSION = 1


def results_dict(table: VerdictTable, specs: Sequence[AttackSpec], flags: Sequence[Flag],
                 protocol: Optional[Protocol] = None,
                 meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The results as a JSON-able mapping (see docs/results-schema.md)."""
    min_max = table.min_max()
    best, worst = table.worst_case()
    return {
        "schema_version": SCHEMA_VERSION,
        "meta": dict(meta or {}),
        # the attacks as they ran (at the protocol's eps), not as they were specified
        "protocol": (settings_dict(dataclasses.replace(protocol, attacks=tuple(specs)))
                     if protocol is not None else None),
        "samples": table.samples,
        "attacks": [{"label": spec.title, "attack": settings_dict(spec.attack),
                     "path": settings_dict(spec.path)} for spec in specs],
        "defenses": [_defense_entry(table, defense) for defense in table.defenses],
        "aggregate": {
            "min_max": None if min_max is None else {"defense": min_max[0],
                                                     "robust_accuracy": min_max[1]},
            "worst_case": {"defense": best, "robust_accuracy": worst},
        },
        "flags": [flag.as_dict() for flag in flags],
        "per_sample": per_sample(table),
    }


def per_sample(table: VerdictTable) -> dict[str, Any]:
    """Per sample and defense: clean correctness, the verdict of every attack (one character
    per attack, in the order of ``attacks``) and the first attack that broke it."""
    symbols = {SURVIVED: "1", BROKEN: "0", SKIPPED: "-", UNTESTED: "."}
    samples = []
    for i in range(table.samples):
        entry: dict[str, Any] = {"index": i}
        for defense in table.defenses:
            entry[defense] = {
                "clean": bool(table.clean[defense][i]),
                "verdicts": "".join(symbols[int(table.verdicts[defense, attack][i])]
                                    for attack in table.attacks)}
        samples.append(entry)
    for defense in table.defenses:
        for entry, attack in zip(samples, table.broken_by(defense)):
            entry[defense]["broken_by"] = attack
    return {"legend": "verdicts: one character per attack in the order of `attacks`: "
                      "1 survived, 0 broken, - skipped (already broken, early exit), "
                      ". untested (screened-out attack, outside the screened samples)",
            "attacks": list(table.attacks), "samples": samples}


def _defense_entry(table: VerdictTable, defense: str) -> dict[str, Any]:
    return {
        "label": defense,
        "clean_accuracy": table.clean_accuracy(defense),
        "cells": [{"attack": attack,
                   "robust_accuracy": table.cell_accuracy(defense, attack),
                   "attacked": table.attacked(defense, attack)[0],
                   "survived": table.attacked(defense, attack)[1],
                   "nonconverged_fraction": table.nonconverged.get((defense, attack), 0.0)}
                  for attack in table.attacks],
        "cumulative_accuracy": table.cumulative_accuracy(defense),
        "min_over_attacks": table.min_over_attacks(defense),
        "strongest_attack": table.strongest_attack(defense),
        "worst_case_accuracy": table.worst_case_accuracy(defense),
        "robust_samples": table.robust(defense).nonzero().squeeze(1).tolist(),
    }


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write ``results`` as indented JSON, atomically (a failed write keeps the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(path, json.dumps(results, indent=1) + "\n")


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def render_report(results: dict[str, Any]) -> str:
    """Markdown: rows are defenses (with clean accuracy), columns attacks; each row's strongest
    attack is underlined, the best defense under its strongest attack is bold."""
    attacks = [entry["label"] for entry in results["attacks"]]
    min_max = results["aggregate"]["min_max"]
    best = min_max["defense"] if min_max else None
    lines = [f"# White-box evaluation ({results['samples']} samples)", "",
             "| Defense | Clean | " + " | ".join(attacks) + " | Worst case |",
             "|---|---|" + "---|" * len(attacks) + "---|"]
    for row in results["defenses"]:
        cells = []
        for cell in row["cells"]:
            text = _percent(cell["robust_accuracy"])
            if cell["attack"] == row["strongest_attack"]:
                text = f"<u>{text}</u>"
                if row["label"] == best:
                    text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {row['label']} | {_percent(row['clean_accuracy'])} | "
                     + " | ".join(cells) + f" | {_percent(row['worst_case_accuracy'])} |")
    worst = results["aggregate"]["worst_case"]
    lines += ["", "Underlined: the strongest attack of each defense; bold: the best defense "
              "under its strongest attack.", ""]
    if min_max:
        lines.append(f"- min-max robustness (papers): {_percent(min_max['robust_accuracy'])}% "
                     f"({min_max['defense']})")
    else:
        lines.append("- min-max robustness (papers): n/a (early exit leaves cells unknown)")
    lines.append(f"- per-sample worst case: {_percent(worst['robust_accuracy'])}% "
                 f"({worst['defense']})")
    lines += _attribution_lines(results) + _screening_lines(results)
    lines += [f"- note: {note}" for note in results.get("notes", [])]
    if results["flags"]:
        lines += ["", "## Flags (possible gradient obfuscation)", ""] + _flag_lines(results)
    if results.get("diagnostics"):
        lines += render_diagnostics(results["diagnostics"], results.get("plots", []))
    return "\n".join(lines) + "\n"


def _attribution_lines(results: dict[str, Any]) -> list[str]:
    """Per defense: how many samples each attack broke first."""
    lines = ["", "First attack to break each sample (per defense):", ""]
    for defense in results["defenses"]:
        counts: dict[str, int] = {}
        for entry in results["per_sample"]["samples"]:
            attack = entry[defense["label"]]["broken_by"]
            if attack is not None:
                counts[attack] = counts.get(attack, 0) + 1
        shown = ", ".join(f"{attack}: {count}" for attack, count in counts.items()) or "none"
        lines.append(f"- {defense['label']}: {shown}")
    return lines


def _screening_lines(results: dict[str, Any]) -> list[str]:
    """The screening's ranking, if the run was screened."""
    screening = results.get("screening")
    if not screening:
        return []
    lines = ["", f"Screening on the first {screening['samples']} samples (broken (defense, "
             "sample) pairs, and per defense; kept: run on every sample, else its screening "
             "verdicts count):", ""]
    lines += [f"- {row['attack']}: {row['broken']} ("
              + ", ".join(f"{defense} {count}" for defense, count
                          in row["broken_per_defense"].items())
              + f"){' (kept)' if row['kept'] else ''}" for row in screening["ranking"]]
    return lines


def _flag_lines(results: dict[str, Any]) -> list[str]:
    """One line per flag kind and message; the cells it concerns are listed (all of them are
    in results.json)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for flag in results["flags"]:
        grouped.setdefault((flag["kind"], flag["message"]), []).append(
            f"{flag['defense']} / {flag['attack']}")
    total = len(results["defenses"]) * len(results["attacks"])
    lines = []
    for (kind, message), cells in grouped.items():
        where = (f"all {total} cells" if len(cells) == total else
                 "; ".join(cells[:4]) + (f"; and {len(cells) - 4} more" if len(cells) > 4
                                         else ""))
        lines.append(f"- {kind}: {message} [{where}]")
    return lines


def render_diagnostics(diagnostics: dict[str, Any], plots: Sequence[str]) -> list[str]:
    """Per-state table of the neural dynamics and the plots."""
    lines = ["", "## Diagnostics of the neural dynamics", "",
             f"Early-state defense reads z_{diagnostics['early_index']}.", "",
             "| state | clean acc. | ready-made PGD acc. | rel. error | entropy |",
             "|---|---|---|---|---|"]
    rows = zip(diagnostics["clean_accuracy"], diagnostics["robust_accuracy"],
               diagnostics["relative_residual"], diagnostics["clean_entropy"])
    for n, (clean, robust, error, entropy) in enumerate(rows):
        lines.append(f"| z_{n} | {_percent(clean)} | {_percent(robust)} | {error:.3g} | "
                     f"{entropy:.3f} |")
    lines += ["", "Intermediate states that look more robust than the final one under the "
              "ready-made attack are the robustness-accumulation sign of gradient obfuscation "
              "(closer-look-neurips22 Fig. 2a).", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return lines


def write_report(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.md`` into ``out_dir``."""
    json_path = write_results(out_dir / "results.json", results)
    report_path = out_dir / "report.md"
    replace_atomically(report_path, render_report(results))
    return json_path, report_path
