"""``deqshield evaluate``: a trained run through the whole white-box evaluation."""

from __future__ import annotations

import json

import pytest

from conftest import CountedCalls, digits_deq_config
from deqshield.cli import main
from deqshield.compare import Selection, compare, read_verdicts
from deqshield.io.config import parse_config
from deqshield.evaluate.run import evaluate_run
from deqshield.training.run import train

CONFIG = digits_deq_config(limit_train=96, downsample=1, solver="broyden")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    train(parse_config(CONFIG), directory, progress=False)
    return directory


def test_evaluation_writes_consistent_results_report_and_plots(run_dir, tmp_path):
    results = evaluate_run(run_dir, tmp_path, eps=0.1, limit=12, autoattack=False,
                           progress=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["aggregate"] == results["aggregate"]
    diagnostics = written["diagnostics"]
    assert len(diagnostics["clean_accuracy"]) == len(diagnostics["robust_accuracy"]) == 5
    assert len(diagnostics["trajectory_deviation"]) == 4
    assert 1 <= diagnostics["early_index"] <= 4
    labels = [attack["label"] for attack in written["attacks"]]
    assert "simultaneous adjoint ensemble" in labels  # the model solves with Broyden
    assert any(label.startswith("unrolled (i=") for label in labels)
    for row in written["defenses"]:
        assert row["worst_case_accuracy"] <= row["min_over_attacks"] <= row["clean_accuracy"]
    for name in written["plots"]:
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "Diagnostics" in report
    assert "note: no AutoAttack column" in report  # PGD alone: the report says so


def test_compare_reads_each_defenses_robust_samples(run_dir, tmp_path, capsys):
    evaluate_run(run_dir, tmp_path, eps=0.1, limit=12, autoattack=False, progress=False)
    path = tmp_path / "results.json"
    written = json.loads(path.read_text())
    rows = {row["label"]: set(row["robust_samples"]) for row in written["defenses"]}
    best = written["aggregate"]["worst_case"]["defense"]
    assert read_verdicts(path).robust == {i: i in rows[best] for i in range(12)}
    for label, robust in rows.items():
        result = compare(read_verdicts(path), read_verdicts(path, Selection(label)))
        assert (result.only_a, result.only_b) == (len(rows[best] - robust),
                                                  len(robust - rows[best]))
    assert main(["compare", str(path), str(path), "--defense-b", "ensemble"]) == 0
    assert "McNemar's exact test p =" in capsys.readouterr().out
    assert main(["compare", str(path), str(path), "--defense-a", "nope"]) == 2
    assert "has no defense 'nope'" in capsys.readouterr().err


def test_cli_evaluate_with_entropy_defense_and_autoattack(run_dir, tmp_path, capsys):
    code = main(["evaluate", str(run_dir), "--out", str(tmp_path), "--eps", "0.1",
                 "--limit", "8", "--quick", "--entropy", "--entropy-steps", "2",
                 "--early-index", "2", "--pgd-steps", "3", "--quiet"])
    assert code == 0
    assert "per-sample worst case" in capsys.readouterr().out
    written = json.loads((tmp_path / "results.json").read_text())
    defenses = [row["label"] for row in written["defenses"]]
    assert sum(label.startswith("entropy-reduction") for label in defenses) == 3
    assert "entropy_change_clean" in written["diagnostics"]
    assert any(attack["label"].startswith("Square") for attack in written["attacks"])
    assert {attack["attack"]["steps"] for attack in written["protocol"]["attacks"]
            if attack["attack"]["name"] == "pgd"} == {3}


def test_an_interrupted_evaluation_resumes_to_the_same_verdicts(run_dir, tmp_path,
                                                                monkeypatch, capsys):
    """Every attacked batch is journaled at once; --resume replays the journal and attacks
    only the rest, and the results equal an uninterrupted run's, early-exit bookkeeping
    included."""
    import deqshield.evaluate.matrix as matrix

    options = ["--eps", "0.01", "--limit", "12", "--early-index", "2", "--no-autoattack",
               "--early-exit", "--quiet"]
    batches = CountedCalls(monkeypatch, matrix, "witness_nonconverged")  # one call a batch
    assert main(["evaluate", str(run_dir), *options, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    attacked_whole = batches.calls
    batches.calls, batches.stop_after = 0, 3
    out = tmp_path / "cut"
    assert main(["evaluate", str(run_dir), *options, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    journal = out / "evaluation-journal-0.jsonl"
    assert len(journal.read_text().splitlines()) == 4  # the header and three batches
    assert not (out / "results.json").exists()
    # a journal is never silently overwritten or ignored
    assert main(["evaluate", str(run_dir), *options, "--out", str(out)]) == 2
    assert main(["evaluate", str(run_dir), *options, "--seed", "3", "--resume",
                 "--out", str(out)]) == 2  # another seed: another evaluation
    batches.calls, batches.stop_after = 0, None
    assert main(["evaluate", str(run_dir), *options, "--resume", "--out", str(out)]) == 0
    assert batches.calls == attacked_whole - 3 > 0
    resumed = json.loads((out / "results.json").read_text())
    for part in ("per_sample", "aggregate", "defenses", "attacks"):
        assert resumed[part] == whole[part], part
    assert not list(out.glob("evaluation-journal-*"))


def test_explicit_baseline_gets_pgd_apgd_and_square(tmp_path):
    from deqshield.data import load_dataset
    from deqshield.evaluate.run import evaluate_model
    from deqshield.models import SmallCNNSettings

    test = load_dataset("digits", "test")
    model = SmallCNNSettings(channels=(4,)).build(test.input_shape, 10)
    results = evaluate_model(model, test, test, tmp_path, eps=0.1, limit=6, quick=True,
                             progress=False)
    assert [row["label"] for row in results["defenses"]] == ["final"]
    assert [a["label"] for a in results["attacks"]] == ["PGD-10", "APGD-CE/T",
                                                        "Square (gradient-free)"]
    assert not any("AutoAttack column" in note for note in results["notes"])
    assert any(note.startswith("quick run") for note in results["notes"])
    assert (tmp_path / "report.md").exists() and (tmp_path / "defense_attack_matrix.png").exists()


def test_evaluate_run_of_an_explicit_baseline(tmp_path):
    config = {**CONFIG, "model": {"name": "small-cnn", "channels": [4]}}
    train(parse_config(config), tmp_path / "cnn", progress=False)
    results = evaluate_run(tmp_path / "cnn", eps=0.1, limit=4, autoattack=False,
                           progress=False)
    assert results["meta"]["model"] == "small-cnn"
    assert (tmp_path / "cnn" / "evaluation" / "results.json").exists()
