"""Certified training through the trainer and ``deqshield certify`` (tiny models on digits)."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import torch

from deqshield.attacks.pgd import PGD
from deqshield.certify import CNN7Settings, CerDEQ, CerDEQSettings, certify, cnn7_matching_budget
from deqshield.certify.objective import EpsilonSchedule
from deqshield.io.checkpoint import load_checkpoint
from deqshield.cli import main
from deqshield.compare import read_verdicts
from deqshield.certify.run import certify_run
from deqshield.io.config import load_config, parse_config
from deqshield.data import load_dataset
from deqshield.errors import ConfigError
from deqshield.paths import FinalState
from deqshield.training.forward import StepRandomness
from deqshield.training.objectives import Certified
from deqshield.training.run import train

MODELS = {
    "cerdeq": {"name": "cerdeq", "input_shape": [1, 8, 8], "conv_channels": [4],
               "linear_width": 16},
    "cnn7": {"name": "cnn7", "input_shape": [1, 8, 8], "width": 2, "linear_width": 16},
}
EPS_TRAIN, EPS_CERTIFY = 0.02, 0.005


def certified_config(model: dict) -> dict:
    return {
        "data": {"name": "digits", "limit_train": 256},
        "model": model,
        "train": {"epochs": 2, "batch_size": 64, "lr": 5e-3, "grad_clip": 10.0,
                  "objective": {"name": "certified",
                                "schedule": {"target": EPS_TRAIN, "start": 1, "length": 3}},
                  "selection": {"metric": "certified", "limit": 64}},
    }


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained_run(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param)
    result = train(parse_config(certified_config(MODELS[request.param])), run_dir,
                   progress=False)
    assert [r.certified_accuracy is not None for r in result.history.epochs] == [True, True]
    return run_dir


def test_certify_run_writes_a_consistent_report(trained_run):
    results = certify_run(trained_run, limit=96, eps=EPS_CERTIFY, pgd_steps=10)
    saved = json.loads((trained_run / "certify.json").read_text())
    assert saved["accuracy"] == results["accuracy"] and saved["samples"] == 96
    accuracy = results["accuracy"]
    assert 0 < accuracy["certified"] <= min(accuracy["clean"], accuracy["pgd"]) + 1e-9
    assert results["certified_broken_by_pgd"] == 0
    per_sample = saved["per_sample"]
    assert [entry["index"] for entry in per_sample] == list(range(96))
    assert sum(entry["certified"] for entry in per_sample) == round(96 * accuracy["certified"])
    assert all(entry["certified_margin"] > 0 for entry in per_sample if entry["certified"])
    assert all(entry["pgd"] and entry["clean"] for entry in per_sample if entry["certified"])
    errors = results["error_percent"]
    assert errors["certified"] == pytest.approx(100 * (1 - accuracy["certified"]))
    report = (trained_run / "certify.md").read_text()
    assert "Stand-Err | Cert-Err | PGD-Err" in report and f"{errors['pgd']:.2f}%" in report
    curve = results["bound_growth"]
    assert len(curve["steps"]) == len(curve["relative_width"]) > 0
    assert (trained_run / "bound_growth.png").stat().st_size > 0


def test_no_certified_sample_is_broken_by_final_state_pgd(trained_run):
    config = load_config(trained_run / "config.yaml")
    data = load_dataset("digits", "test")
    x, y = data.images[:128], data.labels[:128]
    model = config.model.build(data.input_shape, data.num_classes)
    load_checkpoint(trained_run, model=model, restore_rng=False)
    model.eval()
    certified, _ = certify(model, x, y, EPS_CERTIFY)
    assert certified.any()
    x, y = x[certified], y[certified]
    for seed, loss in ((0, "ce"), (1, "margin")):
        attack = PGD(eps=EPS_CERTIFY, step_size=EPS_CERTIFY / 4, steps=20, loss=loss)
        adversarial = attack.run(model, FinalState(), x, y,
                                 generator=torch.Generator().manual_seed(seed)).x_adv
        with torch.no_grad():
            predicted = model.predict(adversarial)
        assert ((predicted == y) | (predicted == -1)).all()


def test_certify_command(trained_run, tmp_path):
    assert main(["certify", str(trained_run), "--out", str(tmp_path), "--limit", "32",
                 "--eps", str(EPS_CERTIFY), "--pgd-steps", "2"]) == 0
    assert json.loads((tmp_path / "certify.json").read_text())["samples"] == 32
    again = ["certify", str(trained_run), "--out", str(tmp_path), "--limit", "16",
             "--eps", str(EPS_CERTIFY), "--pgd-steps", "2", "--quiet"]
    assert main(again) == 2, "certify.json is there: overwriting it needs --force"
    assert json.loads((tmp_path / "certify.json").read_text())["samples"] == 32
    assert main([*again, "--force"]) == 0
    assert json.loads((tmp_path / "certify.json").read_text())["samples"] == 16


def test_compare_pairs_two_certifications_sample_by_sample(trained_run, tmp_path, capsys):
    reports = {}
    for folder, limit in (("all", "32"), ("part", "16")):
        assert main(["certify", str(trained_run), "--out", str(tmp_path / folder), "--limit",
                     limit, "--eps", str(EPS_CERTIFY), "--pgd-steps", "2", "--quiet"]) == 0
        reports[folder] = tmp_path / folder / "certify.json"
    saved = json.loads(reports["all"].read_text())
    verdicts = read_verdicts(reports["all"])
    assert verdicts.robust == {entry["index"]: entry["certified"]
                               for entry in saved["per_sample"]}
    assert verdicts.accuracy == pytest.approx(saved["accuracy"]["certified"])
    assert main(["compare", str(reports["all"]), str(reports["all"])]) == 0
    assert "by A only 0, by B only 0; McNemar's exact test p = 1" in capsys.readouterr().out
    assert main(["compare", str(reports["all"]), str(reports["part"])]) == 2
    assert "different test images" in capsys.readouterr().err
    for option in (["--defense-a", "final"], ["--radius", "0.5"]):
        assert main(["compare", str(reports["all"]), str(reports["all"]), *option]) == 2
        assert "is an interval-bound certification: it takes no" in capsys.readouterr().err


def test_test_eps_is_the_radius_selected_and_certified_by_default(tmp_path, monkeypatch):
    """Trained at EPS_TRAIN, meant for EPS_CERTIFY: the dev selection and certify use the latter."""
    import deqshield.training.loop as loop
    radii = []
    real = loop.certified_accuracy
    monkeypatch.setattr(loop, "certified_accuracy",
                        lambda model, data, eps, *rest: radii.append(eps) or real(model, data,
                                                                                    eps, *rest))
    config = certified_config(MODELS["cnn7"])
    config["train"].update(epochs=1)
    config["train"]["objective"]["test_eps"] = EPS_CERTIFY
    train(parse_config(config), tmp_path, progress=False)
    assert radii == [EPS_CERTIFY]
    assert certify_run(tmp_path, limit=16, pgd_steps=2)["eps"] == EPS_CERTIFY
    for radius in (0.0, 1.5):  # not a radius; covers the input range
        config["train"]["objective"]["test_eps"] = radius
        with pytest.raises(ConfigError, match="test_eps"):
            parse_config(config)


def test_certified_objective_follows_the_eps_schedule():
    objective = Certified(schedule=EpsilonSchedule(target=0.1, start=2, length=4))
    torch.manual_seed(0)
    model = CerDEQ(CerDEQSettings(input_shape=(1, 8, 8), conv_channels=(2,), linear_width=8))
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    clean = objective.loss(model.eval(), x, y, StepRandomness(step=0))
    late = objective.loss(model, x, y, StepRandomness(step=10))
    assert late.loss > clean.loss and not clean.robust
    assert torch.equal(clean.logits, late.logits)


def test_config_validation_for_certified_models():
    config = parse_config(certified_config(MODELS["cerdeq"]))
    assert isinstance(config.model, CerDEQSettings)
    with pytest.raises(ConfigError, match="configured for inputs"):
        config.model.build((1, 28, 28), 10)
    bad_key = {**MODELS["cnn7"], "depth": 7}
    with pytest.raises(ConfigError, match="depth"):
        parse_config(certified_config(bad_key))
    with pytest.raises(ConfigError, match="certifiable model"):
        parse_config(certified_config({"name": "small-cnn"}))
    pgd = certified_config(MODELS["cnn7"])
    pgd["train"]["objective"] = {"name": "pgd-at"}
    with pytest.raises(ConfigError, match="needs objective 'certified'"):
        parse_config(pgd)
    zero = certified_config(MODELS["cnn7"])
    zero["train"]["objective"]["schedule"]["target"] = 0.0
    with pytest.raises(ConfigError, match="eps > 0"):
        parse_config(zero)


def test_mnist_configs_share_the_parameter_budget():
    folder = importlib.resources.files("deqshield") / "configs"
    cerdeq = load_config(str(folder / "mnist-cerdeq-eps0.1.yaml"))
    cnn7 = load_config(str(folder / "mnist-cnn7-eps0.1.yaml"))
    assert isinstance(cnn7.model, CNN7Settings) and cerdeq.train == cnn7.train
    budget = sum(p.numel() for p in cerdeq.model.build((1, 28, 28), 10).parameters())
    matched = cnn7_matching_budget(budget, (1, 28, 28), 10)
    assert (cnn7.model.width, cnn7.model.linear_width) == (matched.width, matched.linear_width)
