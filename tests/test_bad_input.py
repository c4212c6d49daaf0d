"""Issue 15: every bad input gets a one-line answer and nothing is lost.

Command-line cases go through :func:`deqshield.cli.main` and check the contract: exit code 2,
one line ``deqshield: error: ...`` on stderr, and no file of the run changed (the run folder is
hashed before and after). API cases check that deqshield's own errors are raised.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deqshield.cli import args as cli_args
from deqshield.validation import SEED_LIMIT
from deqshield.attacks import PGD
from deqshield.cli import main
from deqshield.io.config import load_config, parse_config
from deqshield.convergence import ConvergencePolicy, convergence_policy
from deqshield.errors import (CheckpointError, ConfigError, InputError,
                              NonConvergenceWarning, NotConvergedError)
from deqshield.models import ConvDEQSettings
from deqshield.paths import FinalState
from deqshield.evaluate import run_protocol
from deqshield.evaluate.specs import AttackSpec, Protocol
from deqshield.readouts import Early, Ensemble, Final
from deqshield.io.runs import load_run
from deqshield.solvers import Picard
from deqshield.training.run import train

CONFIG = {
    "data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
    "model": {"name": "conv-deq", "channels": 4, "downsample": 1, "pool": 2,
              "solver": {"name": "anderson", "max_iter": 5, "tol": 1e-3}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "checkpoint_every": 2,
              "keep_last": 10, "selection": {"metric": "clean", "limit": 16}},
}


def cli(*argv: object) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as stop:  # argparse's own exits (--help)
            code = int(stop.code or 0)
    return code, out.getvalue(), err.getvalue()


def digest(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` with the sha256 of its content (folders: "dir")."""
    if not folder.exists():
        return {}
    return {str(path.relative_to(folder)): "dir" if path.is_dir() else
            hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*"))}


def refused(*argv: object, unchanged: Path, says: tuple[str, ...] = ()) -> str:
    """Assert the contract for ``argv`` and return the error line."""
    before = digest(unchanged)
    code, _, err = cli(*argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("deqshield: error: "), err
    for fragment in says:
        assert fragment in err, err
    assert digest(unchanged) == before
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("run")
    train(parse_config(CONFIG), directory, progress=False)
    return directory


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def model() -> ConvDEQSettings:
    torch.manual_seed(0)
    settings = ConvDEQSettings(channels=4, solver=Picard(max_iter=6, tol=1e-3))
    return settings.build((1, 8, 8), 10).eval()


# -- 1, 18, 21: runs and checkpoints ------------------------------------------------------

def test_case01_resume_with_another_model_is_refused_before_writing(run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**CONFIG, "model": {**CONFIG["model"], "channels": 8}}))
    refused("train", other, "--out", run, "--resume", "--quiet", unchanged=run,
            says=("model differs", "channels: run 4, config 8"))
    assert load_run(run).config.model.channels == 4  # the run still loads


def test_case01_a_checkpoint_that_does_not_fit_fails_before_config_is_rewritten(run,
                                                                               monkeypatch):
    monkeypatch.setattr("deqshield.training.run.check_resumable", lambda *args: None)
    other = parse_config({**CONFIG, "model": {**CONFIG["model"], "channels": 8}})
    before = digest(run)
    with pytest.raises(CheckpointError, match="does not match the model"):
        train(other, run, resume=True, progress=False)
    assert digest(run) == before


def test_case18_a_run_without_checkpoint_says_so(run, tmp_path):
    (tmp_path / "config.yaml").write_text((run / "config.yaml").read_text())
    refused("evaluate", tmp_path, "--eps", "0.1", unchanged=tmp_path,
            says=("has no checkpoint yet", "train it first", "--resume"))


def test_case21_the_final_checkpoint_is_written_once(run):
    names = sorted(entry.name for entry in (run / "checkpoints").iterdir()
                   if entry.name.startswith("step-"))
    assert names == ["step-00000002", "step-00000004"]  # 2 batches per epoch, 2 epochs


# -- 2, 3, 4, 10, 11: evaluate's numbers ----------------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("--eps", "-0.1", "--eps must be a finite number >= 0 and < 1, got -0.1"),   # case 2
    ("--eps", "nan", "--eps must be a finite number"),                         # case 2
    ("--eps", "2", "< 1, got 2.0"),                                            # case 10
    ("--eps", "1", "< 1, got 1.0"),                                            # case 10
    ("--eps", "inf", "got inf"),                                               # case 10
    ("--limit", "0", "--limit must be an integer >= 1, got 0"),                # case 3
    ("--limit", "-3", "got -3"),                                               # case 3
    ("--early-index", "0", "--early-index must be an integer >= 1, got 0"),    # case 4
    ("--apgd-iterations", "0", "--apgd-iterations must be an integer >= 1"),   # case 4
    ("--square-queries", "-5", "--square-queries must be an integer >= 1"),    # case 4
    ("--pgd-steps", "0", "--pgd-steps must be an integer >= 1"),               # case 4
    ("--early-index", "999", "between 1 and 5"),                               # case 11
])
def test_case02_03_04_10_11_bad_evaluate_numbers(run, option, value, says):
    eps = [] if option == "--eps" else ["--eps", "0.1"]
    refused("evaluate", run, *eps, option, value, unchanged=run, says=(says,))


def test_case04_negative_entropy_steps(run):
    refused("evaluate", run, "--eps", "0.1", "--entropy", "--entropy-steps", "-1",
            unchanged=run, says=("--entropy-steps must be an integer >= 0, got -1",))


def test_case11_early_index_beyond_the_solver_is_refused_by_the_readout(model):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="Early.index must be an integer between 1 and 6"):
        Early(index=100).logits(model, x)
    Early(index=6).logits(model, x)


# -- 5, 6, 7, 14: output folders and I/O failures ---------------------------------------------

def test_case05_out_that_cannot_be_created(run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused("evaluate", run, "--eps", "0.1", "--out", blocker / "results", unchanged=run,
            says=("--out", "cannot be written"))
    refused("train", run / "config.yaml", "--out", blocker / "run", unchanged=tmp_path,
            says=("cannot be written",))


def test_case05_read_only_file_system(run, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("deqshield.cli.args.tempfile.TemporaryFile", read_only)
    refused("evaluate", run, "--eps", "0.1", "--out", tmp_path / "e", unchanged=run,
            says=("Read-only file system",))
    refused("train", run / "config.yaml", "--out", tmp_path / "t", unchanged=run,
            says=("Read-only file system",))


def test_case06_full_disk_while_plotting_keeps_results_json(run, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr("deqshield.evaluate.run.plot_per_state", full_disk)
    out = tmp_path / "evaluation"
    err = refused("evaluate", run, "--eps", "0.05", "--out", out, "--limit", "4",
                  "--early-index", "2", "--no-autoattack", "--quiet", unchanged=run,
                  says=("No space left on device",))
    assert "x.png" in err
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 4 and results["aggregate"]["worst_case"]
    # case 17: the recorded protocol lists the attacks at the radius that ran
    assert {attack["attack"]["eps"] for attack in results["protocol"]["attacks"]} == {0.05}
    assert not list(out.glob(".tmp-*"))


def test_case07_out_is_an_existing_file(run, tmp_path):
    target = tmp_path / "results"
    target.write_text("keep me")
    refused("evaluate", run, "--eps", "0.1", "--out", target, unchanged=tmp_path,
            says=("is a file, not a folder",))


def test_case14_earlier_results_need_force(run, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    refused("evaluate", run, "--eps", "0.1", "--out", tmp_path, unchanged=tmp_path,
            says=("already holds", "--force"))


# -- 8, 9, 15: train ------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["bogus", "cuda:99", "tpu"])
def test_case08_unknown_device(config_file, tmp_path, device):
    refused("train", config_file, "--out", tmp_path / "run", "--device", device,
            unchanged=tmp_path, says=(repr(device),))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_case08_cuda_without_a_gpu(config_file, tmp_path):
    refused("train", config_file, "--out", tmp_path / "run", "--device", "cuda",
            unchanged=tmp_path, says=("CUDA is not available",))


def test_a_failed_command_leaves_no_empty_output_folder_it_created(tmp_path):
    config = tmp_path / "mnist.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {"name": "mnist"}}))
    missing = tmp_path / "no-data"
    refused("train", config, "--out", tmp_path / "new" / "run", "--data-dir", missing,
            "--quiet", unchanged=tmp_path, says=("could not find",))
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder the user made stays
    kept.mkdir()
    refused("train", config, "--out", kept, "--data-dir", missing, "--quiet",
            unchanged=tmp_path, says=("could not find",))
    assert kept.is_dir()


def test_case09_ctrl_c_names_the_last_checkpoint(config_file, tmp_path, monkeypatch):
    from deqshield.training.loop import Trainer

    step = Trainer._step

    def interrupted_after_three(self, x, y, last=True):
        robust = step(self, x, y, last)
        if self.position.step == 3:
            raise KeyboardInterrupt
        return robust

    monkeypatch.setattr(Trainer, "_step", interrupted_after_three)
    code, _, err = cli("train", config_file, "--out", tmp_path / "run", "--quiet")
    assert code == 130 and err.count("\n") == 1, err
    assert "step-00000002" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.setattr(Trainer, "_step", step)
    assert cli("train", config_file, "--out", tmp_path / "run", "--resume", "--quiet")[0] == 0


@pytest.mark.parametrize("yaml_text, says", [
    ("model: {name: conv-deq, channels: true}\n", "channels"),
    ("model: {name: conv-deq}\ntrain: {lr: '0.1'}\n", "train.lr"),
    ("model: {name: conv-deq}\ntrain:\n  epochs: 2\n  epochs: 3\n", "'epochs' is given twice"),
])
def test_case15_strict_configs(tmp_path, yaml_text, says):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=says):
        load_config(path)
    refused("train", path, "--out", tmp_path / "run", unchanged=tmp_path, says=(says,))
    assert not (tmp_path / "run").exists()


def test_case15_16_strict_settings():
    for bad in ({"eps": "0.1"}, {"eps": math.inf}, {"eps": math.nan}, {"steps": True},
                {"eps": 1}, {"bounds": (1.0, 0.0)}, {"step_size": math.inf}):
        with pytest.raises(ValueError):
            PGD(**bad)
    assert PGD(eps=0).eps == 0.0 and PGD(eps=3.0, norm="l2").eps == 3.0


# -- 12, 13, 17, 19, 20: the Python API -------------------------------------------------------

def test_case12_inputs_outside_the_valid_range(model):
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    for bad in (255 * x, x - 0.5):
        with pytest.raises(InputError, match=r"valid input range \[0, 1\]"):
            Final().logits(model, bad)
        with pytest.raises(InputError, match=r"valid input range \[0, 1\]"):
            PGD(eps=0.1, steps=1).run(model, FinalState(), bad, y)
    with pytest.raises(ValueError, match="lo < hi"):
        PGD(bounds=(1.0, 0.0))


def test_case13_a_divergent_solve_is_never_silent(model):
    x = torch.rand(3, 1, 8, 8)
    divergent = ConvDEQSettings(channels=4,
                                solver=Picard(max_iter=6, tol=1e-3)).build((1, 8, 8), 10)
    with torch.no_grad():
        for parameter in divergent.deq.cell.parameters():
            parameter.mul_(1e4)
    divergent.eval()
    assert not divergent.trajectory(x).converged.any()
    for readout in (Final(), Ensemble()):
        with pytest.warns(NonConvergenceWarning, match="did not converge"):
            readout.logits(divergent, x)
    with convergence_policy(ConvergencePolicy(action="raise")):
        with pytest.raises(NotConvergedError, match="3 of 3 samples"):
            Final().logits(divergent, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonConvergenceWarning)
        Early(index=2).logits(divergent, x)  # reads an intermediate state by design
        divergent.deq.solver = Picard(max_iter=6, tol=0.0)  # a fixed number of steps
        Final().logits(divergent, x)
        with convergence_policy(ConvergencePolicy(action="ignore")):
            divergent.deq.solver = Picard(max_iter=6, tol=1e-3)
            Final().logits(divergent, x)


def test_case17_results_record_the_radius_that_ran(model):
    data = torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    protocol = Protocol(defenses=(Final(),), attacks=(AttackSpec(attack=PGD(steps=1)),),
                        eps=0.05)
    results = run_protocol(protocol, model, data, progress=False)
    assert results["protocol"]["attacks"][0]["attack"]["eps"] == 0.05
    assert results["attacks"][0]["attack"]["eps"] == 0.05


@pytest.mark.parametrize("labels, says", [
    (torch.tensor([1, 10]), r"labels must lie in \[0, 10\)"),
    (torch.tensor([-1, 2]), r"labels must lie in \[0, 10\)"),
    (torch.tensor([1.0, 2.0]), "labels must be an int64"),
    (torch.tensor([1, 2, 3]), r"labels must have shape \(2,\)"),
])
def test_case19_bad_labels(model, labels, says):
    with pytest.raises(InputError, match=says):
        PGD(eps=0.1, steps=1).run(model, FinalState(), torch.rand(2, 1, 8, 8), labels)


def test_case19_float64_inputs(model):
    with pytest.raises(InputError, match="dtype torch.float64 but the model's weights are"):
        Final().logits(model, torch.rand(2, 1, 8, 8, dtype=torch.float64))


def test_case20_ensemble_without_states(model):
    with pytest.raises(InputError, match="averages no state"):
        Ensemble(first=100).logits(model, torch.rand(2, 1, 8, 8))


# -- the contract itself: --debug, argparse's own errors, random invalid values ----------------

def test_debug_shows_the_error_instead_of_one_line(run):
    for argv in (["--debug", "evaluate", run, "--eps", "-1"],
                 ["evaluate", run, "--eps", "-1", "--debug"]):
        with pytest.raises(InputError, match="--eps must be"):
            main([str(arg) for arg in argv])


def test_argparse_errors_are_one_line(run):
    refused("evaluate", run, "--eps", "0.1", "--limit", "abc", unchanged=run,
            says=("argument --limit: invalid int value: 'abc'",))
    refused("evaluate", run, unchanged=run, says=("--eps",))
    refused("bogus-command", unchanged=run, says=("invalid choice",))


@contextlib.contextmanager
def nothing_loaded():
    """Fail the test if a data set is loaded: arguments must be checked before."""
    from unittest import mock

    def forbidden(*args, **kwargs):
        raise AssertionError("a data set was loaded before the arguments were checked")

    targets = ("deqshield.io.runs", "deqshield.evaluate.run", "deqshield.training.run")
    with contextlib.ExitStack() as stack:
        for module in targets:
            stack.enter_context(mock.patch(f"{module}.load_dataset", forbidden))
        yield


def bad(rule: str) -> st.SearchStrategy[str]:
    """Invalid command-line values for an option following ``rule``."""
    junk = st.sampled_from(["abc", "", "1.5e", "nan", "inf", "-inf", "0x10", "true"])
    if rule == "positive":
        return st.integers(max_value=0).map(str) | st.just("1.5") | junk
    if rule == "non_negative":
        return st.integers(max_value=-1).map(str) | st.just("2.5") | junk
    if rule == "seed":
        return (st.integers(max_value=-1) | st.integers(min_value=SEED_LIMIT)).map(str) \
            | st.just("2.5") | junk
    if rule == "non_negative_number":
        return st.floats(max_value=-1e-9, allow_infinity=False).map(str) | junk
    return (st.floats(min_value=1.0).map(str) | st.floats(max_value=-1e-9).map(str)
            | junk)  # a radius


def option_values(rules) -> st.SearchStrategy[tuple[str, str]]:
    names = {cli_args.positive: "positive", cli_args.non_negative: "non_negative",
             cli_args.non_negative_number: "non_negative_number", cli_args.radius: "radius",
             cli_args.seed: "seed"}
    return st.sampled_from(sorted(rules)).flatmap(
        lambda dest: st.tuples(st.just("--" + dest.replace("_", "-")),
                               bad(names[rules[dest]])))


def assert_refused_quietly(argv: list[object], run: Path) -> None:
    with nothing_loaded():
        refused(*argv, unchanged=run.parent)


@settings(max_examples=25, deadline=None)
@given(option_values(cli_args.EVALUATE))
def test_property_evaluate_refuses_every_invalid_number(run, option_value):
    option, value = option_value
    eps = [] if option == "--eps" else ["--eps", "0.1"]
    assert_refused_quietly(["evaluate", run, *eps, f"{option}={value}"], run)


@settings(max_examples=25, deadline=None)
@given(option_values(cli_args.CERTIFY))
def test_property_certify_refuses_every_invalid_number(run, option_value):
    option, value = option_value
    assert_refused_quietly(["certify", run, f"{option}={value}"], run)


@settings(max_examples=25, deadline=None)
@given(option_values(cli_args.SMOOTH))
def test_property_smooth_refuses_every_invalid_number(run, option_value):
    option, value = option_value
    assert_refused_quietly(["smooth", run, "--sigma", "0.25", f"{option}={value}"], run)


@pytest.mark.parametrize("sigma", ["0", "-1", "nan", "inf", "1e308"])
def test_smooth_refuses_a_bad_sigma_in_plain_words(run, sigma):
    err = refused("smooth", run, f"--sigma={sigma}", "--quiet", unchanged=run.parent,
                  says=("sigma",))
    assert "pydantic" not in err and "type=" not in err, err


@pytest.mark.parametrize("readout", ["early:\u00b2", "early:\u0663", "early:", "early:-1"])
def test_smooth_refuses_a_readout_index_that_is_not_plain_digits(run, readout):
    refused("smooth", run, "--sigma", "0.25", "--readout", readout, unchanged=run.parent,
            says=("--readout must be final, early:I or ensemble",))


@pytest.mark.parametrize("command", ["evaluate", "certify", "smooth"])
def test_a_seed_beyond_the_generators_range_is_refused(run, command):
    options = {"evaluate": ["--eps", "0.1"], "certify": [], "smooth": ["--sigma", "0.25"]}
    refused(command, run, *options[command], "--seed", str(2**63 - 1), unchanged=run.parent,
            says=("--seed must be an integer >= 0 and < 4294967296",))


def test_a_config_folder_is_named_as_a_folder(tmp_path):
    code, _, err = cli("train", tmp_path, "--out", tmp_path / "run")
    assert code == 2 and "is a folder" in err and "Traceback" not in err, err


@pytest.mark.parametrize("option", [["--checks", "10"], ["--warm-steps", "2"], ["--chained"]])
def test_smooth_refuses_serialized_options_without_serialized(run, option):
    refused("smooth", run, "--sigma", "0.25", *option, unchanged=run.parent,
            says=("--serialized",))


CONFIG_KEYS = {
    ("train", "epochs"): [0, -1, True, "2", 1.5],
    ("train", "batch_size"): [0, False, "64", 2.5],
    ("train", "lr"): [0, -1e-3, "1e-3", True, float("nan"), float("inf")],
    ("data", "dev_fraction"): [1.0, -0.1, "0.1", True],
    ("model", "channels"): [True, 0, "4", 4.5],
    ("train", "seed"): [-1, 2**63 - 1, "0"],
    ("data", "seed"): [-1, 2**32],
}
SELECTION_EPS = [float("inf"), 2.0, 1.0, -0.1, "0.1", True]


@settings(max_examples=25, deadline=None)
@given(st.one_of(
    st.sampled_from(sorted(CONFIG_KEYS)).flatmap(
        lambda key: st.tuples(st.just(key), st.sampled_from(CONFIG_KEYS[key]))),
    st.tuples(st.just(("selection", "eps")), st.sampled_from(SELECTION_EPS))),
    st.sampled_from(["bogus", "gpu:0", "cuda:99", "cpu", None]))
def test_property_train_refuses_invalid_configs_and_devices(tmp_path_factory, key_value,
                                                             device):
    (section, key), value = key_value
    config = json.loads(json.dumps(CONFIG))
    if section == "selection":
        config["train"]["selection"]["attack"] = {"name": "pgd", key: value}
    else:
        config[section][key] = value
    folder = tmp_path_factory.mktemp("train")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["train", path, "--out", folder / "run", "--quiet"]
    with nothing_loaded():
        refused(*argv, *(["--device", device] if device else []), unchanged=folder)
    assert not (folder / "run").exists()
