"""The model zoo: ``zoo add`` packages tiny digits runs into a temporary zoo (``DEQSHIELD_ZOO``),
which is then loaded, listed, shown, evaluated and certified as ``zoo:NAME``; every model shipped
in the package is checked against its card."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from deqshield import zoo
from deqshield.certify.run import certify_run
from deqshield.cli import build_parser, main
from deqshield.cli.smooth import smoothing_settings
from deqshield.io.config import parse_config
from deqshield.errors import CheckpointError, DataError, InputError
from deqshield.evaluate.run import evaluate_run
from deqshield.io.runs import load_run
from deqshield.smoothing.run import smooth_run
from deqshield.readouts import Ensemble
from deqshield.smoothing.sampling import Serialized, Smoothing
from deqshield.training.run import train
from deqshield.zoo import slices, store
from deqshield.zoo.cards import OutsideCheck, ReferenceAutoAttack, card_json, read_card
from deqshield.zoo.package import add_run
from deqshield.zoo.render import (README_BEGIN, README_END, readme_section, render,
                                  robust_figure, row, split_readme)
from deqshield.zoo.render import main as main_render
from deqshield.zoo.smoothed import largest_radius, smoothing_command

DEQ = "digits-linf-0.1-deq"
CERDEQ = "digits-linf-0.005-cerdeq"
DEQ_CONFIG = {
    "data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 96},
    "model": {"name": "conv-deq", "channels": 4, "downsample": 1, "pool": 2,
              "solver": {"name": "broyden", "max_iter": 4, "tol": 1e-4}},
    "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3,
              "selection": {"metric": "clean", "limit": 16}},
}
CERDEQ_CONFIG = {
    "data": {"name": "digits", "limit_train": 256},
    "model": {"name": "cerdeq", "input_shape": [1, 8, 8], "conv_channels": [4],
              "linear_width": 16},
    "train": {"epochs": 2, "batch_size": 64, "lr": 5e-3, "grad_clip": 10.0,
              "objective": {"name": "certified",
                            "schedule": {"target": 0.02, "start": 1, "length": 3}},
              "selection": {"metric": "certified", "limit": 64}},
}


@pytest.fixture(scope="module")
def deq_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("deq")
    train(parse_config(DEQ_CONFIG), run, progress=False)
    evaluate_run(run, run / "evaluation", eps=0.1, limit=6, quick=True, progress=False)
    return run


@pytest.fixture(scope="module")
def cerdeq_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cerdeq")
    train(parse_config(CERDEQ_CONFIG), run, progress=False)
    certify_run(run, limit=32, eps=0.005, pgd_steps=5, pgd_restarts=1)
    return run


@pytest.fixture(scope="module")
def zoo_root(deq_run, cerdeq_run, tmp_path_factory):
    """A temporary zoo holding the two runs, packaged through the command line."""
    root = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(store.ENVIRONMENT, str(root))
        assert main(["zoo", "add", str(deq_run), "--name", DEQ,
                     "--config-file", "digits-conv-deq-pgdat.yaml",
                     "--evaluation", str(deq_run / "evaluation"), "--wall-time", "12.5",
                     "--machine", "test machine", "--note", "tiny", "--note", "digits",
                     "--evaluate-command", "deqshield evaluate zoo:x --eps 0.1"]) == 0
        assert main(["zoo", "add", str(cerdeq_run), "--name", CERDEQ,
                     "--config-file", "mnist-cerdeq-eps0.1.yaml",
                     "--certification", str(cerdeq_run),
                     "--evaluate-command", "deqshield certify zoo:y"]) == 0
    return root


@pytest.fixture
def in_zoo(zoo_root, monkeypatch):
    monkeypatch.setenv(store.ENVIRONMENT, str(zoo_root))
    return zoo_root


def assert_matches_card(name: str) -> None:
    """What is checked of every shipped model: it loads (sha256 verified), its card validates
    and its clean predictions on the package's test slice are the ones the card records."""
    model, card = zoo.load(name)
    assert card.name == name
    assert store.sha256_of_bytes((store.root() / name / store.WEIGHTS).read_bytes()) == card.sha256
    if card.dataset in slices.SLICES:
        assert slices.slice_predictions(model, card.dataset) == card.slice_predictions


def test_every_shipped_model_loads_and_matches_its_card(monkeypatch):
    monkeypatch.delenv(store.ENVIRONMENT, raising=False)
    assert store.root() == store.PACKAGED
    for name in zoo.names():
        assert_matches_card(name)


def test_packaged_cards_record_the_run_and_its_measurements(in_zoo, deq_run, cerdeq_run):
    assert zoo.names() == [CERDEQ, DEQ]
    card = zoo.card(DEQ)
    results = json.loads((deq_run / "evaluation" / "results.json").read_text())
    best = results["aggregate"]["worst_case"]["defense"]
    row = next(entry for entry in results["defenses"] if entry["label"] == best)
    assert (card.clean_accuracy, card.worst_case_accuracy, card.min_over_attacks) == (
        row["clean_accuracy"], row["worst_case_accuracy"], row["min_over_attacks"])
    apgd = [cell["robust_accuracy"] for cell in row["cells"] if cell["attack"].startswith("APGD")]
    assert apgd and card.autoattack_accuracy == min(apgd)
    assert card.results["evaluate"]["defense"] == best and card.test_images == 6
    assert card.solver is not None and card.solver.name == "broyden"
    assert card.cell_evaluations_per_prediction == 4 and card.certified_accuracy is None
    assert card.training.objective == "standard" and card.training_wall_time_seconds == 12.5
    assert card.notes == ("tiny", "digits") and card.training_machine == "test machine"
    assert card.retrain_command == ("deqshield train src/deqshield/configs/"
                                    f"digits-conv-deq-pgdat.yaml --out runs/{DEQ} --data-dir DATA")
    assert card.slice_predictions is None  # digits has no shipped slice
    certified = zoo.card(CERDEQ)
    report = json.loads((cerdeq_run / "certify.json").read_text())
    assert certified.certified_accuracy == report["accuracy"]["certified"]
    assert certified.clean_accuracy == report["accuracy"]["clean"]
    assert certified.results["certify"]["certified_broken_by_pgd"] == 0
    assert certified.test_images == 32 and certified.solver is None
    for name in zoo.names():
        assert_matches_card(name)


def test_loaded_model_reproduces_the_runs_predictions(in_zoo, deq_run):
    model, card = zoo.load(DEQ)
    run = load_run(deq_run)
    x = run.test.images[:16]
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), run.model(x).argmax(1))
    assert not model.training and card.parameters == sum(p.numel() for p in model.parameters())


def test_tampered_weights_are_refused(in_zoo, tmp_path, monkeypatch):
    copy = tmp_path / "zoo"
    shutil.copytree(in_zoo, copy)
    monkeypatch.setenv(store.ENVIRONMENT, str(copy))
    weights = copy / DEQ / store.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.load(DEQ)
    assert main(["evaluate", f"zoo:{DEQ}", "--out", str(tmp_path / "out"), "--eps", "0.1"]) == 2


def test_unknown_names_are_refused_with_the_known_ones(in_zoo, capsys):
    with pytest.raises(InputError, match=f"known: {CERDEQ}, {DEQ}"):
        zoo.load("mnist-linf-0.3-nothing")
    assert main(["zoo", "show", "nothing"]) == 2
    assert main(["certify", "zoo:nothing", "--out", "x"]) == 2
    assert capsys.readouterr().err.count("no zoo model named") == 2


def test_card_validation(in_zoo, tmp_path):
    card = zoo.card(DEQ)
    fields = json.loads(card_json(card))
    (tmp_path / "card.json").write_text(json.dumps(fields))
    assert read_card(tmp_path / "card.json") == card
    bad = {"name": "digits-0.1-deq", "eps": 0.2, "worst_case_accuracy": 1.0, "sha256": "abc",
           "clean_accuracy": "0.5"}
    for key, value in bad.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**fields, key: value}))
        with pytest.raises(CheckpointError, match="not a valid model card"):
            read_card(path)
    assert dataclasses.replace(card, name="digits-linf-0.100-deq2").kind == "deq2"
    with pytest.raises(ValidationError, match="does not match"):
        dataclasses.replace(card, name="digits-linf-0.3-deq")
    with pytest.raises(ValidationError, match="exceeds clean_accuracy"):
        dataclasses.replace(card, min_over_attacks=card.clean_accuracy + 0.01)


def test_zoo_add_refuses_to_overwrite_and_checks_its_inputs(in_zoo, deq_run, tmp_path,
                                                            monkeypatch, capsys):
    shutil.copytree(in_zoo, tmp_path / "zoo")
    monkeypatch.setenv(store.ENVIRONMENT, str(tmp_path / "zoo"))
    add = ["zoo", "add", str(deq_run), "--name", DEQ, "--config-file",
           "digits-conv-deq-pgdat.yaml", "--evaluation", str(deq_run / "evaluation"),
           "--evaluate-command", "deqshield evaluate zoo:x"]
    assert main(add) == 2
    assert "--force" in capsys.readouterr().err
    before = zoo.card(DEQ)
    assert main([*add, "--force"]) == 0
    assert zoo.card(DEQ).sha256 == before.sha256
    with pytest.raises(InputError, match="--evaluation"):
        add_run(deq_run, "digits-linf-0.1-other", config_file="digits-conv-deq-pgdat.yaml")
    for config_file in ("nothing.yaml", "../configs/digits-conv-deq-pgdat.yaml"):
        with pytest.raises(InputError, match="not a shipped config"):
            add_run(deq_run, "digits-linf-0.1-other", config_file=config_file,
                    evaluation=deq_run / "evaluation")
    assert main([*add[:4], "digits-linf-0.3-deq", *add[5:]]) == 2  # eps 0.3 vs 0.1 measured
    assert "does not match" in capsys.readouterr().err
    assert zoo.names() == [CERDEQ, DEQ]
    assert main([*add[:4], "../digits-linf-0.1-deq", *add[5:]]) == 2
    assert main([*add, "--force", "--wall-time", "-1"]) == 2
    assert "is not {dataset}" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"aggregate": {}}')
    with pytest.raises(InputError, match="lacks what deqshield writes"):
        add_run(deq_run, DEQ, config_file="digits-conv-deq-pgdat.yaml", evaluation=tmp_path,
                evaluate_command="deqshield evaluate zoo:x", force=True)
    with pytest.raises(InputError, match="--evaluate-command"):  # a card says how to re-measure
        add_run(deq_run, DEQ, config_file="digits-conv-deq-pgdat.yaml",
                evaluation=deq_run / "evaluation", force=True)
    copy = "digits-linf-0.1-deqcopy"  # a zoo model is a run too
    assert main(["zoo", "add", f"zoo:{DEQ}", "--name", copy, *add[5:]]) == 0
    assert zoo.card(copy).sha256 == zoo.card(DEQ).sha256
    assert main([*add, "--force", "--processes", "0"]) == 2
    assert "--processes" in capsys.readouterr().err
    assert main([*add, "--force", "--processes", "2"]) == 0  # trained under torchrun
    assert zoo.card(DEQ).retrain_command == (
        "torchrun --nproc_per_node 2 -m deqshield train src/deqshield/configs/"
        f"digits-conv-deq-pgdat.yaml --out runs/{DEQ} --data-dir DATA")
    assert main([*add, "--force"]) == 0  # as the other tests expect it


def test_zoo_list_and_show(in_zoo, capsys):
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    deq, cerdeq = zoo.card(DEQ), zoo.card(CERDEQ)
    assert lines == [
        f"{CERDEQ}  digits  eps 0.005  cerdeq  clean {100 * cerdeq.clean_accuracy:.1f}%  "
        f"certified {100 * cerdeq.certified_accuracy:.1f}%",
        f"{DEQ}  digits  eps 0.1  deq  clean {100 * deq.clean_accuracy:.1f}%  "
        f"worst case {100 * deq.worst_case_accuracy:.1f}%"]
    assert main(["zoo", "show", DEQ]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == deq.sha256


def test_zoo_list_gives_a_full_test_set_figure_to_the_image(monkeypatch, capsys):
    monkeypatch.delenv(store.ENVIRONMENT, raising=False)
    assert main(["zoo", "list"]) == 0
    listed = capsys.readouterr().out
    for name in zoo.names():
        card = zoo.card(name)
        if card.certified_accuracy is not None and card.test_images == 10_000:
            assert f"{name}  " in listed
            assert f"certified {100 * card.certified_accuracy:.2f}%" in listed


@pytest.fixture
def writable_zoo(zoo_root, tmp_path, monkeypatch):
    """A copy of the temporary zoo that a test may change."""
    root = tmp_path / "zoo"
    shutil.copytree(zoo_root, root)
    monkeypatch.setenv(store.ENVIRONMENT, str(root))
    return root


def reevaluate(out: Path) -> None:
    """``deqshield evaluate zoo:DEQ`` on 4 images into ``out``."""
    assert main(["evaluate", f"zoo:{DEQ}", "--out", str(out), "--eps", "0.1", "--limit", "4",
                 "--no-autoattack", "--quiet"]) == 0


def test_evaluate_a_zoo_model(in_zoo, tmp_path, capsys):
    out = tmp_path / "evaluation"
    reevaluate(out)
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 4 and results["meta"]["run"] == f"zoo:{DEQ}"
    assert results["meta"]["checkpoint"] == str(in_zoo / DEQ / store.WEIGHTS)
    assert main(["evaluate", f"zoo:{DEQ}", "--eps", "0.1"]) == 2
    assert "pass --out" in capsys.readouterr().err
    assert main(["evaluate", f"zoo:{DEQ}", "--out", str(tmp_path / "latest"), "--eps", "0.1",
                 "--which", "latest"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert sorted(path.name for path in (in_zoo / DEQ).iterdir()) == [
        "card.json", "config.yaml", "weights.safetensors"]


def test_zoo_update_records_a_re_evaluation_of_the_shipped_weights(writable_zoo, deq_run,
                                                                   tmp_path, capsys):
    before = store.card(DEQ)
    out = tmp_path / "again"
    reevaluate(out)
    assert main(["zoo", "update", DEQ, "--evaluation", str(out),
                 "--evaluate-command", "deqshield evaluate zoo:x --limit 4"]) == 0
    after = store.card(DEQ)
    results = json.loads((out / "results.json").read_text())
    best = results["aggregate"]["worst_case"]
    assert (after.test_images, after.worst_case_accuracy) == (4, best["robust_accuracy"])
    assert after.evaluate_command == "deqshield evaluate zoo:x --limit 4"
    assert (after.sha256, after.training, after.notes) == (before.sha256, before.training,
                                                          before.notes)
    zoo.load(DEQ)  # the weights still match the card
    assert main(["zoo", "update", DEQ, "--evaluation", str(deq_run / "evaluation")]) == 2
    assert "not zoo:" in capsys.readouterr().err
    assert main(["zoo", "update", CERDEQ, "--evaluation", str(out)]) == 2
    assert "not zoo:" in capsys.readouterr().err
    assert main(["zoo", "update", DEQ, "--note", "re-evaluation under way", "--note", "b"]) == 0
    noted = store.card(DEQ)
    assert noted.notes == ("re-evaluation under way", "b")
    assert dataclasses.replace(noted, notes=after.notes) == after  # nothing else changed
    assert main(["zoo", "update", DEQ, "--evaluate-command", "deqshield evaluate zoo:x"]) == 0
    commanded = store.card(DEQ)
    assert (commanded.evaluate_command, commanded.notes) == ("deqshield evaluate zoo:x",
                                                             noted.notes)
    assert main(["zoo", "update", DEQ]) == 2
    assert "--note" in capsys.readouterr().err
    assert main(["zoo", "update", DEQ, "--outside-check", "0.5", "--outside-samples", "2",
                 "--outside-command", "c", "--evaluate-command", "x"]) == 2
    assert "--evaluate-command goes with" in capsys.readouterr().err


def test_an_outside_check_is_recorded_until_a_re_evaluation(writable_zoo, tmp_path, capsys):
    before = store.card(DEQ)
    worst = before.worst_case_accuracy
    command = "python benchmarks/independent_attack.py zoo:x RESULTS --eps 0.1 | tee log"
    check = ["--outside-check", str(worst), "--outside-samples", str(before.test_images),
             "--outside-command", command]
    assert main(["zoo", "update", DEQ, *check, "--note", "checked"]) == 0
    checked = store.card(DEQ)
    assert checked.outside_check == OutsideCheck(command=command, samples=before.test_images,
                                                 worst_case_accuracy=worst)
    assert (checked.notes, checked.outside_broken) == (("checked", ), 0)
    assert dataclasses.replace(checked, outside_check=None, notes=before.notes) == before
    assert "tee log`: unchanged)" in readme_section() and "\\| tee log" in readme_section()
    one_more = worst + 1 / before.test_images
    for bad in (["--outside-check", str(one_more), "--outside-samples", "6",  # above the protocol
                 "--outside-command", command],
                ["--outside-check", str(worst), "--outside-samples",
                 str(before.test_images + 1), "--outside-command", command],  # more than tested
                ["--outside-check", str(worst), "--outside-command", command],  # no samples
                ["--outside-samples", "3"]):                                # no figure
        assert main(["zoo", "update", DEQ, *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["zoo", "update", DEQ, *check, "--evaluation", str(tmp_path)])  # one at a time
    assert "not allowed with argument --outside-check" in capsys.readouterr().err
    assert store.card(DEQ) == checked
    with pytest.raises(ValidationError, match="needs the evaluation's worst_case_accuracy"):
        dataclasses.replace(store.card(CERDEQ), outside_check=checked.outside_check)
    assert main(["zoo", "update", DEQ, "--reference-autoattack", str(worst),
                 "--reference-command", command]) == 0
    out = tmp_path / "again"
    reevaluate(out)
    assert main(["zoo", "update", DEQ, "--evaluation", str(out)]) == 0
    again = store.card(DEQ)
    assert again.outside_check is None, "a new evaluation needs its own check"
    assert again.reference_autoattack is None, "and its own reference AutoAttack"


def test_a_reference_autoattack_is_recorded_and_cannot_undercut_the_worst_case(writable_zoo,
                                                                               capsys):
    before = store.card(DEQ)
    worst = before.checked_worst_case
    command = "python benchmarks/independent_attack.py zoo:x RESULTS --autoattack --all-samples"
    assert main(["zoo", "update", DEQ, "--reference-autoattack", str(worst),
                 "--reference-command", command]) == 0
    recorded = store.card(DEQ)
    assert recorded.reference_autoattack == ReferenceAutoAttack(command=command, accuracy=worst)
    assert dataclasses.replace(recorded, reference_autoattack=None) == before
    assert f"| {100 * worst:.1f} | {100 * worst:.1f} |" in row(recorded)  # AutoAttack, worst
    assert "under the reference AutoAttack on every test image" in readme_section()
    assert main(["zoo", "list"]) == 0
    assert f"  AutoAttack {100 * worst:.1f}%" in capsys.readouterr().out
    one_less = worst - 1 / before.test_images  # it broke a sample the worst case counts robust
    above_clean = before.clean_accuracy + 1 / before.test_images
    for bad in (["--reference-autoattack", str(one_less), "--reference-command", command],
                ["--reference-autoattack", str(above_clean), "--reference-command", command],
                ["--reference-autoattack", str(worst)],                   # no command
                ["--reference-command", command],                        # no figure
                ["--reference-autoattack", str(worst), "--reference-command", command,
                 "--evaluate-command", "x"]):
        assert main(["zoo", "update", DEQ, *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert store.card(DEQ) == recorded
    # counts, not float32 fractions, are compared: every correct image surviving is allowed
    dataclasses.replace(recorded, clean_accuracy=0.9649999737739563, test_images=1000,
                        worst_case_accuracy=0.9, min_over_attacks=0.9, autoattack_accuracy=None,
                        reference_autoattack=ReferenceAutoAttack(command=command, accuracy=0.965))
    certified = store.card(CERDEQ)  # a certificate is a floor no attack may go below
    below = certified.certified_accuracy - 1 / certified.test_images
    with pytest.raises(ValidationError, match="below the per-sample worst case or the certified"):
        dataclasses.replace(certified, reference_autoattack=ReferenceAutoAttack(
            command=command, accuracy=below))
    with pytest.raises(SystemExit):  # one record at a time
        main(["zoo", "update", DEQ, "--reference-autoattack", str(worst), "--outside-check",
              str(worst)])
    assert "not allowed with argument" in capsys.readouterr().err


def test_tables_show_the_worst_case_an_outside_check_lowered(in_zoo):
    card = dataclasses.replace(zoo.card(DEQ), clean_accuracy=1.0, worst_case_accuracy=0.5,
                               min_over_attacks=0.5, autoattack_accuracy=None, test_images=1000)
    lowered = dataclasses.replace(card, outside_check=OutsideCheck(
        command="python benchmarks/independent_attack.py", samples=600,
        worst_case_accuracy=0.25))
    assert "| 50.0 |" in row(card) and "| 25.0 (50.0) |" in row(lowered)
    assert robust_figure(lowered).startswith(
        "25.0% per-sample worst case (final readout) after an outside check of 600 samples "
        "(`python benchmarks/independent_attack.py`: 250 broken; the protocol said 50.0%)")
    # stored float32 fractions: the same 880 of 1000 is not a lowering, 879 is one
    stored = dataclasses.replace(card, worst_case_accuracy=0.8799999952316284,
                                 min_over_attacks=0.9)
    same = dataclasses.replace(stored, outside_check=dataclasses.replace(
        lowered.outside_check, samples=900, worst_case_accuracy=0.88))
    assert (same.outside_broken, same.checked_worst_case) == (0, stored.worst_case_accuracy)
    assert "| 88.0 |" in row(same) and ": unchanged)" in robust_figure(same)
    one = dataclasses.replace(same, outside_check=dataclasses.replace(
        same.outside_check, worst_case_accuracy=0.879))
    assert one.outside_broken == 1 and "| 87.9 (88.0) |" in row(one)
    with pytest.raises(ValidationError, match="between the 880 samples"):
        dataclasses.replace(one, outside_check=dataclasses.replace(one.outside_check,
                                                                   samples=879))
    # on 10,000 images one sample is 0.01 points: shown, not rounded away
    big = dataclasses.replace(stored, test_images=10_000, outside_check=dataclasses.replace(
        same.outside_check, samples=9000, worst_case_accuracy=0.8799))
    assert big.outside_broken == 1 and "| 87.99 (88.00) |" in row(big)


def test_certify_a_zoo_model_reproduces_the_runs_certificate(in_zoo, cerdeq_run, tmp_path,
                                                               capsys):
    assert main(["certify", f"zoo:{CERDEQ}", "--out", str(tmp_path), "--limit", "32",
                 "--eps", "0.005", "--pgd-steps", "5", "--pgd-restarts", "1"]) == 0
    ours = json.loads((tmp_path / "certify.json").read_text())
    theirs = json.loads((cerdeq_run / "certify.json").read_text())
    assert ours["accuracy"] == theirs["accuracy"] and ours["step"] == theirs["step"]
    assert main(["certify", f"zoo:{CERDEQ}"]) == 2
    assert "pass --out" in capsys.readouterr().err
    assert main(["certify", f"zoo:{DEQ}", "--out", str(tmp_path / "deq"), "--eps", "0.1"]) == 2
    assert "not certifiable" in capsys.readouterr().err


def test_render_lists_every_model_with_its_commands(in_zoo):
    text = render()
    assert f"| `{DEQ}` | digits | Linf | 0.1 | deq |" in text
    assert "| 12 s |" in text and "test machine" in text
    assert zoo.card(CERDEQ).retrain_command in text
    assert "deqshield evaluate zoo:x --eps 0.1" in text
    assert "\ntiny\n" in text and "\ndigits\n" in text  # the card's notes


def test_docs_zoo_is_current(monkeypatch):
    monkeypatch.delenv(store.ENVIRONMENT, raising=False)
    docs = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"
    assert docs.read_text() == render(), \
        "regenerate: python -m deqshield.zoo.render > docs/zoo.md"


def test_readme_zoo_tables_are_current(monkeypatch):
    monkeypatch.delenv(store.ENVIRONMENT, raising=False)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert split_readme(readme)[1] == readme_section(), \
        "regenerate: python -m deqshield.zoo.render --readme"
    for name in zoo.names():
        assert f"`{name}`" in readme_section()


def test_readme_section_is_rewritten_between_its_markers(in_zoo, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    main_render(["--readme", str(readme)])
    assert readme.read_text() == (f"intro\n{README_BEGIN}\n{readme_section()}{README_END}\n"
                                  "outro\n")
    card = zoo.card(CERDEQ)
    assert f"{100 * card.certified_accuracy:.1f}% certified" in readme_section()
    assert card.retrain_command in readme_section()
    for text in ("no markers\n", f"{README_END}\n{README_BEGIN}\n",
                 f"{README_BEGIN}\n{README_BEGIN}\n{README_END}\n"):
        with pytest.raises(InputError, match="needs the lines"):
            split_readme(text)


def test_mnist_slice_is_the_start_of_the_official_test_set(monkeypatch):
    data = zoo.test_slice("mnist")
    assert data.images.shape == (256, 1, 28, 28) and data.images.dtype == torch.float32
    assert 0 <= data.images.min() and data.images.max() == 1
    assert data.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert (slices.DATA / slices.SLICES["mnist"][0]).stat().st_size < 300_000
    with pytest.raises(InputError, match="no test slice"):
        zoo.test_slice("cifar10")
    monkeypatch.setitem(slices.SLICES, "mnist", (slices.SLICES["mnist"][0], "0" * 64))
    with pytest.raises(DataError, match="sha256"):
        zoo.test_slice("mnist")


def test_slice_predictions_of_an_mnist_model_are_checked(in_zoo, tmp_path, monkeypatch):
    """The shipped-model check on an MNIST-shaped model packaged by hand (the tests have no
    MNIST run to package): matching predictions pass, altered ones fail."""
    config = parse_config({**DEQ_CONFIG, "data": {"name": "mnist"}})
    torch.manual_seed(0)
    model = config.model.build((1, 28, 28), 10).eval()
    predictions = slices.slice_predictions(model, "mnist")
    assert predictions is not None and len(predictions) == slices.PREDICTED
    folder = tmp_path / "mnist-linf-0.1-deq"
    folder.mkdir()
    import safetensors.torch
    import yaml

    from deqshield.io.config import dump_config

    (folder / store.WEIGHTS).write_bytes(safetensors.torch.save(model.state_dict()))
    (folder / store.CONFIG).write_text(yaml.safe_dump(dump_config(config)))
    fields = json.loads(card_json(zoo.card(DEQ)))
    fields.update(name=folder.name, dataset="mnist", input_shape=[1, 28, 28],
                  sha256=store.sha256_of_bytes((folder / store.WEIGHTS).read_bytes()),
                  slice_predictions=list(predictions))
    (folder / store.CARD).write_text(json.dumps(fields))
    monkeypatch.setenv(store.ENVIRONMENT, str(tmp_path))
    assert_matches_card(folder.name)
    fields["slice_predictions"] = [(label + 1) % 10 for label in predictions]
    (folder / store.CARD).write_text(json.dumps(fields))
    with pytest.raises(AssertionError):
        assert_matches_card(folder.name)


def test_fashion_mnist_slice_is_the_start_of_the_official_test_set():
    data = zoo.test_slice("fashion-mnist")
    assert data.images.shape == (256, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert data.class_names[9] == "Ankle boot"


SMOOTHED = "digits-l2-0.25-deqsmooth25"
SMOOTHING = Smoothing(sigma=0.25, n0=10, n=50, alpha=0.1, batch=25)


NOISE_CONFIG = {
    "data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 600},
    "model": {"name": "conv-deq", "channels": 8, "downsample": 1, "pool": 2,
              "solver": {"name": "broyden", "max_iter": 6, "tol": 1e-4}},
    "train": {"epochs": 4, "batch_size": 32, "lr": 1e-2,
              "objective": {"name": "gaussian-noise", "sigma": 0.25},
              "selection": {"metric": "clean", "limit": 32}},
}


@pytest.fixture(scope="module")
def smoothed_run(tmp_path_factory):
    """A digits DEQ trained with Gaussian noise and certified by randomized smoothing on 8
    test images (few draws: largest certifiable radius 0.43)."""
    run = tmp_path_factory.mktemp("noise")
    train(parse_config(NOISE_CONFIG), run, progress=False)
    smooth_run(run, SMOOTHING, out=run / "smoothing", limit=8)
    return run


@pytest.fixture
def smoothed_zoo(smoothed_run, tmp_path, monkeypatch):
    """A zoo holding the smoothed digits DEQ, packaged through the command line."""
    monkeypatch.setenv(store.ENVIRONMENT, str(tmp_path / "zoo"))
    assert main(["zoo", "add", str(smoothed_run), "--name", SMOOTHED, "--config-file",
                 "digits-conv-deq-pgdat.yaml", "--smoothing",
                 str(smoothed_run / "smoothing")]) == 0
    return tmp_path / "zoo"


def test_smoothed_card_records_the_certification_and_its_command(smoothed_zoo, smoothed_run,
                                                                  tmp_path, capsys):
    report = json.loads((smoothed_run / "smoothing" / "smoothing.json").read_text())
    card = zoo.card(SMOOTHED)
    record = card.smoothing
    assert record is not None and record.settings == SMOOTHING and record.test_images == 8
    assert (card.threat_model, card.eps, card.kind, card.test_images) == ("L2", 0.25,
                                                                          "deqsmooth25", 8)
    assert card.clean_accuracy == report["certified_accuracy"]["0"]
    assert card.certified_accuracy == report["certified_accuracy"]["0.25"]
    assert record.certified_accuracy == {"0": report["certified_accuracy"]["0"],
                                         "0.25": report["certified_accuracy"]["0.25"]}
    assert 0.25 < largest_radius(SMOOTHING) < 0.5  # the reported 0.5 was left out
    assert record.abstained == report["abstained"]
    assert record.cell_evaluations_per_image == report["mean_cell_evaluations"]
    assert record.command == (f"deqshield smooth zoo:{SMOOTHED} --sigma 0.25 --n0 10 --n 50 "
                              "--alpha 0.1 --batch 25 --readout final --seed 0 --limit 8 "
                              "--out OUT --data-dir DATA")
    assert_matches_card(SMOOTHED)
    out = tmp_path / "again"
    command = record.command.split()[1:-4]
    assert main([*command, "--out", str(out)]) == 0
    assert json.loads((out / "smoothing.json").read_text())["records"] == report["records"]
    assert main(command) == 2
    assert "pass --out" in capsys.readouterr().err
    text = render()
    assert f"| `{SMOOTHED}` | conv-deq (gaussian-noise) |" in text and record.command in text
    assert "| r = 0 | r = 0.25 |" in text and "r = 0.5" not in text
    assert f"`{SMOOTHED}`" not in text.split("## Smoothed models")[0]


def test_zoo_update_records_a_new_certification_of_the_shipped_weights(smoothed_zoo,
                                                                       smoothed_run, tmp_path,
                                                                       capsys):
    """``zoo update NAME --smoothing DIR`` takes the smoothing record of a certification of
    ``zoo:NAME``'s own weights (e.g. on more images) and keeps the weights."""
    before = zoo.card(SMOOTHED)
    out = tmp_path / "again"
    command = before.smoothing.command.split()[1:-4]
    command[command.index("--limit") + 1] = "5"
    assert main([*command, "--out", str(out)]) == 0
    assert main(["zoo", "update", SMOOTHED, "--smoothing", str(out)]) == 0
    after = zoo.card(SMOOTHED)
    report = json.loads((out / "smoothing.json").read_text())
    assert after.test_images == after.smoothing.test_images == 5
    assert after.certified_accuracy == report["certified_accuracy"]["0.25"]
    assert "--limit 5" in after.smoothing.command
    assert (after.sha256, after.training) == (before.sha256, before.training)
    assert_matches_card(SMOOTHED)
    # a certification of the run folder, not of the zoo model, is refused
    assert main(["zoo", "update", SMOOTHED, "--smoothing",
                 str(smoothed_run / "smoothing")]) == 2
    assert f"not zoo:{SMOOTHED}" in capsys.readouterr().err
    report["weights_sha256"] = "0" * 64  # other weights
    (out / "smoothing.json").write_text(json.dumps(report))
    assert main(["zoo", "update", SMOOTHED, "--smoothing", str(out)]) == 2
    assert "other weights" in capsys.readouterr().err
    assert main(["zoo", "update", SMOOTHED, "--evaluation", str(out)]) == 2
    assert "smoothed model" in capsys.readouterr().err
    assert zoo.card(SMOOTHED) == after


def test_smoothed_cards_are_validated(smoothed_zoo, tmp_path):
    card = zoo.card(SMOOTHED)
    record = card.smoothing
    assert record is not None
    accuracy = record.certified_accuracy
    images = record.test_images
    bad_records = {
        "cannot be certified": {**accuracy, "0.5": 0.0},
        "not a count": {**accuracy, "0.25": 0.3},
        "must not increase": {"0": accuracy["0"] / 2, "0.25": accuracy["0"]},
        "must give radius 0": {"0.25": accuracy["0.25"]},
        "not a radius": {**accuracy, "0.10": 0.0},
    }
    for message, values in bad_records.items():
        with pytest.raises(ValidationError, match=message):
            dataclasses.replace(record, certified_accuracy=values)
    with pytest.raises(ValidationError, match="exceeds test_images"):
        dataclasses.replace(record, abstained=images + 1)
    with pytest.raises(ValidationError, match="counts images abstained on"):
        dataclasses.replace(record, abstained=images - round(accuracy["0"] * images) + 1)
    with pytest.raises(ValidationError, match="fewer than the n0 \\+ n"):
        dataclasses.replace(record, cell_evaluations_per_image=59.0)
    bad_cards = {
        "kind is {base}smooth": {"name": "digits-l2-0.25-deqsmooth50"},
        "threat model is L2": {"name": "digits-linf-0.25-deqsmooth25", "threat_model": "Linf"},
        "not a radius the smoothing record certified": {"name": "digits-l2-0.3-deqsmooth25",
                                                        "eps": 0.3},
        "the smoothing record's accuracy": {"clean_accuracy": 0.0},
        "only for one": {"solver": None},
        "the smoothing command must be": {"smoothing": dataclasses.replace(
            record, command=record.command.replace("--seed 0", "--seed 1"))},
        "has no smoothing record": {"smoothing": None},
    }
    for message, changes in bad_cards.items():
        with pytest.raises(ValidationError, match=message):
            dataclasses.replace(card, **changes)
    fields = json.loads(card_json(card))
    fields["smoothing"]["certified_accuracy"]["0.5"] = 0.0
    (tmp_path / "card.json").write_text(json.dumps(fields))
    with pytest.raises(CheckpointError, match="smoothing.*cannot be certified"):
        read_card(tmp_path / "card.json")


def test_zoo_add_checks_the_smoothing_it_packages(smoothed_zoo, smoothed_run, deq_run,
                                                  tmp_path):
    """Only a certification of the packaged checkpoint, on its model and test data, at the
    name's radius, makes a smoothed card."""
    folder = smoothed_run / "smoothing"
    add = functools.partial(add_run, smoothed_run, config_file="digits-conv-deq-pgdat.yaml",
                            force=True)
    with pytest.raises(InputError, match="--smoothing certification only"):
        add(SMOOTHED, smoothing=folder, evaluation=deq_run / "evaluation")
    with pytest.raises(InputError, match="radius 0.5 is not one the smoothing certified"):
        add("digits-l2-0.5-deqsmooth25", smoothing=folder)
    with pytest.raises(ValidationError, match="kind is"):
        add("digits-l2-0.25-deq", smoothing=folder)
    report = json.loads((folder / "smoothing.json").read_text())
    changes = {"certified checkpoint": {"checkpoint": "elsewhere/checkpoints/step-00000001"},
               "not the run's": {"data": "digits/test[:5]"},
               "invalid smoothing settings": {"settings": {**report["settings"], "n": 0}},
               "not a valid record": {"seed": None}}
    for message, change in changes.items():
        (tmp_path / "smoothing.json").write_text(json.dumps({**report, **change}))
        with pytest.raises(InputError, match=message):
            add(SMOOTHED, smoothing=tmp_path)
    del report["abstained"]
    (tmp_path / "smoothing.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="lacks what deqshield writes"):
        add(SMOOTHED, smoothing=tmp_path)


@pytest.mark.parametrize("serialized", [None, Serialized(steps=2, checks=50),
                                        Serialized(steps=2, checks=50, chained=True)])
def test_a_smoothed_cards_command_gives_back_its_settings(serialized):
    settings = Smoothing(sigma=0.5, n0=20, n=300, alpha=0.01, batch=100, readout=Ensemble(),
                         serialized=serialized)
    command = smoothing_command("some-model", settings, images=7, seed=3).split()
    args = build_parser().parse_args(command[1:])
    assert smoothing_settings(args) == settings
    assert (args.limit, args.seed) == (7, 3)
