"""Config validation, the command line and the demo at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deqshield.cli import main
from deqshield.config import dump_config, load_config, parse_config
from deqshield.demo import TINY, run_demo
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


def test_demo_writes_consistent_results(tmp_path):
    results = run_demo(tmp_path, TINY, progress=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["clean_accuracy"] == results["clean_accuracy"]
    states = written["states"]
    assert len(states["accuracy"]) == len(states["relative_residual"]) >= 2
    assert 0.0 <= written["clean_accuracy"] <= 1.0
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == TINY.epochs


def test_cli_demo_tiny(tmp_path, capsys):
    assert main(["demo", "--tiny", "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").exists()
