"""The demo's report: ``report.md`` and a self-contained ``report.html`` (tables + PNG plots)
built from the demo's results mapping."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from deqshield.evaluate.plots import plot_bars
from deqshield.evaluate.specs import defense_label
from deqshield.evaluate.standard import READY_MADE_PATH
from deqshield.readouts import Final
from deqshield.settings import settings_dict

STORY = (
    "A DEQ's forward pass is a trajectory of solver states. Ready-made attacks differentiate "
    "only the final state, so the solver hides gradients and the DEQ looks robust; attacks "
    "that use the intermediate states (simultaneous adjoint, unrolled intermediates, their "
    "ensembles) reveal its white-box robustness, and defenses that read the trajectory (early "
    "state, ensemble of states, test-time entropy reduction) recover part of it. The verdict "
    "per defense is the per-sample worst case over every attack. The last model is the "
    "zoo's shipped MNIST DEQ (eps 0.3), attacked on the MNIST test slice inside the package.")


def _evaluated(results: dict[str, Any]) -> dict[str, Any]:
    """The evaluated models: the ones trained live, then the zoo's."""
    return {**results["models"], **results.get("zoo", {})}


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _rows(evaluation: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the defense x attack table (robust accuracy, %)."""
    attacks = [entry["label"] for entry in evaluation["attacks"]]
    header = ["defense", "clean"] + attacks + ["worst case"]
    rows = [[row["label"], _pct(row["clean_accuracy"])]
            + [_pct(cell["robust_accuracy"]) for cell in row["cells"]]
            + [_pct(row["worst_case_accuracy"])] for row in evaluation["defenses"]]
    return header, rows


def final_row(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The final-state defense's row of an evaluation."""
    label = defense_label(Final())
    return next(row for row in evaluation["defenses"] if row["label"] == label)


def ready_made_accuracy(evaluation: dict[str, Any]) -> Optional[float]:
    """The final state's robust accuracy against the PGD column along :data:`READY_MADE_PATH`
    (the one attack of the demo's columns on that path), or None if it did not run."""
    path = settings_dict(READY_MADE_PATH)
    column = next((i for i, entry in enumerate(evaluation["attacks"]) if entry["path"] == path),
                  None)
    return None if column is None else final_row(evaluation)["cells"][column]["robust_accuracy"]


def _summary(results: dict[str, Any]) -> list[list[str]]:
    table = []
    for name, model in _evaluated(results).items():
        evaluation = model["evaluation"]
        final = final_row(evaluation)
        worst = evaluation["aggregate"]["worst_case"]
        table.append([name, _pct(final["clean_accuracy"]), _pct(ready_made_accuracy(evaluation)),
                      _pct(final["worst_case_accuracy"]),
                      f"{_pct(worst['robust_accuracy'])} ({worst['defense']})"])
    return table


SUMMARY_HEADER = ["model", "clean", "ready-made PGD (final state)",
                  "white-box worst case (final state)", "best defense, worst case"]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


CERTIFIED_HEADER = ["model", "parameters", "clean", "PGD-20", "certified",
                    "certified but broken by PGD"]


def _certified_rows(results: dict[str, Any]) -> list[list[str]]:
    return [[name, str(entry["parameters"]), _pct(entry["accuracy"]["clean"]),
             _pct(entry["accuracy"]["pgd"]), _pct(entry["accuracy"]["certified"]),
             str(entry["certified_broken_by_pgd"])]
            for name, entry in results.get("certified", {}).items()]


def _certified_plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    if not results.get("certified"):
        return []
    bars = plot_bars({name: {"clean": entry["accuracy"]["clean"],
                             "PGD": entry["accuracy"]["pgd"],
                             "certified": entry["accuracy"]["certified"]}
                      for name, entry in results["certified"].items()},
                     out_dir / "certified_vs_clean.png", ylabel="accuracy (%)",
                     title=f"certified training, eps = {results['eps']}")
    return [bars.name] + [f"{entry['folder']}/bound_growth.png"
                          for entry in results["certified"].values()]


CERTIFIED_TEXT = ("Certified accuracy is proven for every input in the eps-box by interval "
                  "bounds through the fixed point (the adjoint DEQ), widened by the remaining "
                  "fixed-point error; the last column checks on the spot that PGD never breaks "
                  "a certified sample.")


def render_markdown(results: dict[str, Any], certified_plots: list[str]) -> str:
    lines = ["# deqshield demo", "", STORY, "",
             f"Data: {results['data']}; threat model: l_inf, eps = {results['eps']}. "
             f"Run time: {results['seconds']:.0f} s.", "", "## Summary (accuracy, %)", ""]
    lines += _markdown_table(SUMMARY_HEADER, _summary(results))
    for name, model in _evaluated(results).items():
        evaluation, folder = model["evaluation"], model["folder"]
        lines += ["", f"## {name}", "", f"Full report: [{folder}/report.md]({folder}/report.md)",
                  "", "Robust accuracy (%) per defense (rows) and attack (columns):", ""]
        lines += _markdown_table(*_rows(evaluation))
        lines += [""] + [f"![{plot}]({folder}/{plot})" for plot in evaluation["plots"]]
    if results.get("certified"):
        lines += ["", "## Certified DEQ (accuracy, %)", "", CERTIFIED_TEXT, ""]
        lines += _markdown_table(CERTIFIED_HEADER, _certified_rows(results))
        lines += [""] + [f"![{plot}]({plot})" for plot in certified_plots]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(results: dict[str, Any], certified_plots: list[str]) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>deqshield demo</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0;}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right;}"
             "th{background:#eee;} img{max-width:48%;margin:4px;}</style></head><body>",
             "<h1>deqshield demo</h1>", f"<p>{html.escape(STORY)}</p>",
             f"<p>Data: {html.escape(results['data'])}; threat model: l<sub>&infin;</sub>, "
             f"eps = {results['eps']}. Run time: {results['seconds']:.0f} s.</p>",
             "<h2>Summary (accuracy, %)</h2>", _html_table(SUMMARY_HEADER, _summary(results))]
    for name, model in _evaluated(results).items():
        evaluation, folder = model["evaluation"], model["folder"]
        parts += [f"<h2>{html.escape(name)}</h2>",
                  "<p>Robust accuracy (%) per defense (rows) and attack (columns).</p>",
                  _html_table(*_rows(evaluation)),
                  "".join(f"<img src='{folder}/{plot}' alt='{plot}'>"
                          for plot in evaluation["plots"])]
    if results.get("certified"):
        parts += ["<h2>Certified DEQ (accuracy, %)</h2>", f"<p>{html.escape(CERTIFIED_TEXT)}</p>",
                  _html_table(CERTIFIED_HEADER, _certified_rows(results)),
                  "".join(f"<img src='{plot}' alt='{plot}'>" for plot in certified_plots)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_demo_report(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``."""
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    certified_plots = _certified_plots(results, out_dir)
    markdown.write_text(render_markdown(results, certified_plots))
    page.write_text(render_html(results, certified_plots))
    return markdown, page
