"""A 2-process gloo run under torchrun trains one model: both ranks end with equal weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import CountedCalls, digits_deq_config


ATTACK = {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 1}
CONFIG = {
    "data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
    "model": {"name": "conv-deq", "channels": 4, "downsample": 2, "pool": 2,
              "solver": {"name": "anderson", "max_iter": 4, "tol": 1e-4}},
    "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 1,
              "objective": {"name": "pgd-at", "attack": ATTACK, "random_intermediate": True},
              "selection": {"attack": ATTACK, "limit": 16}},
}
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_two_processes(*arguments: str, timeout: int = 300) -> None:
    """``deqshield ARGUMENTS`` under torchrun with 2 gloo processes on the CPU; must succeed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "deqshield", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def one_and_two_processes(command: str, run, tmp_path, options: list[str], written: str):
    """The JSON that ``deqshield COMMAND RUN`` writes from one process and from two."""
    from deqshield.cli import main

    assert main([command, str(run), "--out", str(tmp_path / "one"), *options]) == 0
    on_two_processes(command, str(run), "--out", str(tmp_path / "two"), *options)
    return tuple(json.loads((tmp_path / name / written).read_text()) for name in ("one", "two"))


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    digests = tmp_path / "digests"
    on_two_processes("train", str(config), "--out", str(tmp_path / "run"), "--device", "cpu",
                     "--quiet", "--weights-digest-dir", str(digests), timeout=180)
    rank0, rank1 = ((digests / f"rank-{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    # 64 examples, 2 processes, batch 16: 2 steps, one checkpoint per step (rank 0 only).
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"step": 2' in lines[0]


EVAL_CONFIG = digits_deq_config(limit_train=64, downsample=2, solver="anderson")


def trained(config: dict, run):
    from deqshield.io.config import parse_config
    from deqshield.training.run import train

    train(parse_config(config), run, progress=False)
    return run


def test_two_gloo_processes_evaluate_like_one(tmp_path):
    """torchrun shards the test samples; the merged per-sample verdicts equal one process's."""
    run = trained(EVAL_CONFIG, tmp_path / "run")
    options = ["--eps", "0.1", "--limit", "10", "--no-autoattack", "--early-index", "2",
               "--restarts", "2", "--early-exit", "--quiet"]
    one, two = one_and_two_processes("evaluate", run, tmp_path, options, "results.json")
    assert one["per_sample"] == two["per_sample"]
    assert one["aggregate"] == two["aggregate"]


def test_an_evaluation_cut_in_one_process_resumes_in_two(tmp_path, monkeypatch):
    """The journal of an interrupted single-process evaluation is replayed by two gloo
    processes (each takes the journaled batches of its own samples): the same verdicts."""
    import deqshield.evaluate.matrix as matrix
    from deqshield.cli import main

    run = trained(EVAL_CONFIG, tmp_path / "run")
    options = ["--eps", "0.005", "--limit", "10", "--no-autoattack", "--early-index", "2",
               "--early-exit", "--quiet"]
    assert main(["evaluate", str(run), "--out", str(tmp_path / "one"), *options]) == 0
    CountedCalls(monkeypatch, matrix, "witness_nonconverged", stop_after=4)  # a call a batch
    assert main(["evaluate", str(run), "--out", str(tmp_path / "two"), *options]) == 130
    on_two_processes("evaluate", str(run), "--out", str(tmp_path / "two"), *options, "--resume")
    one, two = (json.loads((tmp_path / name / "results.json").read_text())
                for name in ("one", "two"))
    assert one["per_sample"] == two["per_sample"]
    assert one["aggregate"] == two["aggregate"]


def test_two_gloo_processes_smooth_like_one(tmp_path):
    """torchrun splits the images of a smoothing certification; smoothing.json's records equal
    one process's (each image's noise is seeded by its index)."""
    run = trained(EVAL_CONFIG, tmp_path / "run")
    options = ["--sigma", "0.25", "--draws", "100", "--n0", "10", "--batch", "100",
               "--limit", "5", "--alpha", "0.01", "--quiet"]
    one, two = one_and_two_processes("smooth", run, tmp_path, options, "smoothing.json")
    assert one["records"] == two["records"]
    assert one["certified_accuracy"] == two["certified_accuracy"]
    assert not list((tmp_path / "two").glob("smoothing-records-*"))


CERTIFIED_CONFIG = {
    "data": {"name": "digits", "limit_train": 128},
    "model": {"name": "cerdeq", "input_shape": [1, 8, 8], "conv_channels": [4],
              "linear_width": 16},
    "train": {"epochs": 1, "batch_size": 64,
              "objective": {"name": "certified",
                            "schedule": {"target": 0.02, "start": 0, "length": 1}},
              "selection": {"metric": "clean", "limit": 32}},
}


def test_two_gloo_processes_certify_like_one(tmp_path):
    """torchrun splits the samples of ``deqshield certify``; certify.json equals one
    process's (PGD's random starts are drawn for the whole set before the split)."""
    run = trained(CERTIFIED_CONFIG, tmp_path / "run")
    options = ["--eps", "0.01", "--limit", "21", "--batch-size", "8", "--pgd-steps", "3",
               "--quiet"]
    one, two = one_and_two_processes("certify", run, tmp_path, options, "certify.json")
    assert [r["index"] for r in two["per_sample"]] == list(range(21))
    for key in ("accuracy", "certified_broken_by_pgd", "abstained_clean"):
        assert one[key] == two[key], key
    for single, split in zip(one["per_sample"], two["per_sample"]):
        # identical verdicts; the margin bound may differ in float rounding (other batches)
        assert split.pop("certified_margin") == pytest.approx(single.pop("certified_margin"),
                                                              rel=1e-5, abs=1e-6)
        assert single == split
