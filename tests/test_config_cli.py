"""Config validation, the command line and the demo at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deqshield.cli import main
from deqshield.io.config import dump_config, load_config, parse_config
from deqshield.demo.run import TINY, run_demo
from deqshield.errors import ConfigError


def test_config_round_trips_and_rejects_unknown_keys(tmp_path):
    config = parse_config({"model": {"name": "conv-deq", "solver": {"name": "broyden",
                                                                    "max_iter": 8}}})
    assert parse_config(dump_config(config)) == config
    with pytest.raises(ConfigError, match="stop_mod"):
        parse_config({"model": {"name": "dense-deq", "solver": {"name": "picard",
                                                                "stop_mod": "rel"}}})
    with pytest.raises(ConfigError, match="trian"):
        parse_config({"model": {"name": "dense-deq"}, "trian": {}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: dense-deq, width: -3}\n")
    with pytest.raises(ConfigError, match="width"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_help_runs():
    done = subprocess.run([sys.executable, "-m", "deqshield", "--help"], capture_output=True,
                          text=True, check=True)
    assert "demo" in done.stdout


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    run_demo(directory, TINY, progress=False)
    return directory


def test_demo_writes_consistent_report_json_and_plots(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    markdown = (demo_dir / "report.md").read_text()
    page = (demo_dir / "report.html").read_text()
    assert set(results["models"]) == {"PGD-AT", "PGD-AT + random intermediates"}
    for model in results["models"].values():
        evaluation = model["evaluation"]
        for plot in evaluation["plots"]:
            assert (demo_dir / model["folder"] / plot).stat().st_size > 0
            assert f"{model['folder']}/{plot}" in page
        for row in evaluation["defenses"]:
            assert row["worst_case_accuracy"] <= row["clean_accuracy"]
            assert f"{100 * row['clean_accuracy']:.1f}" in markdown
        labels = {row["label"].split("(")[0] for row in evaluation["defenses"]}
        assert {"final", "early", "ensemble", "entropy-reduction"} <= labels
    assert set(results["certified"]) == {"CerDEQ", "CNN-7 (same budget)"}
    for entry in results["certified"].values():
        assert entry["certified_broken_by_pgd"] == 0
        assert entry["accuracy"]["certified"] <= entry["accuracy"]["clean"]
        assert (demo_dir / entry["folder"] / "bound_growth.png").exists()
    assert (demo_dir / "certified_vs_clean.png").stat().st_size > 0
    (shipped,) = results["zoo"].values()  # the zoo's MNIST DEQ on the package's MNIST slice
    assert shipped["evaluation"]["samples"] == TINY.zoo_limit
    for row in shipped["evaluation"]["defenses"]:
        assert row["worst_case_accuracy"] <= row["clean_accuracy"]
    assert shipped["folder"] in markdown
    assert "<table>" in page and "Certified DEQ" in markdown


def test_cli_demo_refuses_to_overwrite_a_previous_demo(demo_dir, capsys):
    assert main(["demo", "--tiny", "--quiet", "--out", str(demo_dir)]) == 2
    assert "already" in capsys.readouterr().err


def test_config_reference_is_current():
    from pathlib import Path

    from deqshield.io.config_reference import render

    reference = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert reference.read_text() == render(), \
        "regenerate: python -m deqshield.io.config_reference > docs/config.md"
