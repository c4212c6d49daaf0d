"""Resuming a run interrupted in the middle of an epoch gives bit-identical weights."""

from __future__ import annotations

import pytest

from deqshield.io.config import parse_config
from deqshield.errors import InputError
from deqshield.io.weights import weights_digest
from deqshield.training.run import train

ATTACK = {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 1}
CONFIG = parse_config({
    "data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
    "model": {"name": "conv-deq", "channels": 4, "downsample": 2, "pool": 2,
              "solver": {"name": "anderson", "max_iter": 4, "tol": 1e-4},
              "gradient": {"name": "phantom", "steps": 2, "damping": 0.5}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3,
              "objective": {"name": "pgd-at", "attack": ATTACK, "random_intermediate": True},
              "jacobian_weight": 0.1, "jacobian_every": 2, "pretrain_steps": 2,
              "pretrain_depth": 3, "checkpoint_every": 3,
              "selection": {"attack": ATTACK, "limit": 16}},
})


class Killed(Exception):
    pass


def kill_at(step_to_die: int):
    def on_step(step: int) -> None:
        if step == step_to_die:
            raise Killed(f"killed after step {step}")
    return on_step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = train(CONFIG, run_dir, progress=False, device="cpu")
    return weights_digest(result.model), (run_dir / "metrics.jsonl").read_text()


@pytest.mark.parametrize("step_to_die", [7, 5], ids=["mid-epoch-checkpoint", "epoch-end"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, uninterrupted, step_to_die):
    # 4 steps per epoch; checkpoints after steps 3 (mid-epoch), 4 (epoch end), 6 (mid-epoch).
    with pytest.raises(Killed):
        train(CONFIG, tmp_path, progress=False, device="cpu", on_step=kill_at(step_to_die))
    with pytest.raises(InputError, match="resume"):
        train(CONFIG, tmp_path, progress=False, device="cpu")
    result = train(CONFIG, tmp_path, resume=True, progress=False, device="cpu")
    digest, metrics = uninterrupted
    assert weights_digest(result.model) == digest
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert result.best_checkpoint is not None
