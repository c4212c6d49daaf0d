"""deqshield.io.checkpoint: exact round trips, resume equivalence, crash safety, corruption."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deqshield.io import atomic, checkpoint
from deqshield.io.checkpoint import (
    best_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from deqshield.io.rng import capture_rng_state, restore_rng_state
from deqshield.errors import CheckpointError, InputError

DATA = torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
TARGETS = DATA.sum(dim=1, keepdim=True).sin()


class Trainer:
    """A tiny model, Adam, a cosine schedule and a generator that draws the batches."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10)
        self.batches = torch.Generator().manual_seed(seed + 1)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            index = torch.randperm(len(DATA), generator=self.batches)[:8]
            loss = (self.model(DATA[index]) - TARGETS[index]).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()

    def save(self, run_dir: Path, step: int, **kwargs: Any) -> Path:
        return save_checkpoint(
            run_dir,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=step,
            epoch=0,
            config={"width": 16, "betas": (0.9, 0.999)},
            metrics={"loss": 0.5},
            extra_generators={"batches": self.batches},
            **kwargs,
        )

    def load(self, path: Path, **kwargs: Any) -> checkpoint.CheckpointInfo:
        return load_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extra_generators={"batches": self.batches},
            **kwargs,
        )


@pytest.fixture
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _draws(generator: torch.Generator) -> list[Any]:
    return [torch.rand(3), torch.rand(3, generator=generator), np.random.rand(3), random.random()]


def _assert_same_draws(first: list[Any], second: list[Any]) -> None:
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


def _assert_same_optimizer_state(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys()
    for index, state in first["state"].items():
        other = second["state"][index]
        assert state.keys() == other.keys()
        for name, value in state.items():
            assert value.dtype == other[name].dtype, (index, name)
            assert torch.equal(value, other[name]), (index, name)


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    trainer.train(3)
    path = trainer.save(tmp_path, step=3)
    params = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
    scheduler_state = trainer.scheduler.state_dict()
    draws = _draws(trainer.batches)

    trainer.train(2)
    info = trainer.load(tmp_path)

    assert info.path == path and info.step == 3 and info.epoch == 0
    assert info.config == {"width": 16, "betas": (0.9, 0.999)} and info.metrics == {"loss": 0.5}
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, params[key]), key
    _assert_same_optimizer_state(trainer.optimizer.state_dict(), optimizer_state)
    assert isinstance(trainer.optimizer.state_dict()["param_groups"][0]["betas"], tuple)
    assert trainer.scheduler.state_dict() == scheduler_state
    _assert_same_draws(_draws(trainer.batches), draws)


def test_resume_matches_uninterrupted_training(tmp_path: Path, deterministic: None) -> None:
    uninterrupted = Trainer(seed=0)
    uninterrupted.train(10)

    interrupted = Trainer(seed=0)
    interrupted.train(5)
    interrupted.save(tmp_path, step=5)
    resumed = Trainer(seed=7)
    resumed.load(tmp_path)
    resumed.train(5)

    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    _assert_same_optimizer_state(
        resumed.optimizer.state_dict(), uninterrupted.optimizer.state_dict()
    )


def test_keeps_last_checkpoints_and_best(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    for step in range(1, 6):
        trainer.save(tmp_path, step=step, keep_last=2, is_best=step == 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["index.json", "step-00000002", "step-00000004", "step-00000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000005"
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000002"
    assert trainer.load(tmp_path, which="best").step == 2
    assert trainer.save(tmp_path, step=5).name == "step-00000005-1"
    with pytest.raises(InputError, match="keep_last"):
        trainer.save(tmp_path, step=6, keep_last=0)


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        Trainer(seed=0).load(tmp_path)


@pytest.mark.parametrize("failing_file", ["optimizer.safetensors", "meta.json", "index.json"])
def test_failed_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_file: str
) -> None:
    trainer = Trainer(seed=0)
    previous = trainer.save(tmp_path, step=1)
    written = []
    write_durably = atomic.write_durably

    def write_then_fail(path: Path, data: bytes) -> None:
        if failing_file in path.name:
            raise OSError("disk full")
        write_durably(path, data)
        written.append(path.name)

    monkeypatch.setattr(atomic, "write_durably", write_then_fail)
    trainer.train(1)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(tmp_path, step=2)
    assert "model.safetensors" in written
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == previous
    assert Trainer(seed=3).load(tmp_path).step == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    trainer.save(tmp_path, step=3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["index.json", "step-00000001", "step-00000003"]


SAVE_FOREVER = textwrap.dedent(
    """
    import sys, torch
    from deqshield.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    run_dir = sys.argv[1]
    model = torch.nn.Linear(256, 256)
    step = load_checkpoint(run_dir, model=model).step if latest_checkpoint(run_dir) else 0
    while True:
        step += 1
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(step)
        save_checkpoint(
            run_dir, model=model, step=step, epoch=0, config={}, metrics={"step": step},
            is_best=step % 3 == 0,
        )
    """
)


def test_sigkill_at_random_moments_leaves_a_loadable_latest_checkpoint(tmp_path: Path) -> None:
    delays = random.Random(0)
    last_step = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(tmp_path)])
        deadline = time.monotonic() + 20
        while _latest_step(tmp_path) <= last_step and time.monotonic() < deadline:
            assert child.poll() is None, "the saving process died on its own"
            time.sleep(0.01)
        time.sleep(delays.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait()

        steps = {which: _load_and_check_filled(tmp_path, which) for which in ("latest", "best")}
        assert steps["latest"] > last_step and steps["best"] % 3 == 0
        last_step = steps["latest"]


def _load_and_check_filled(run_dir: Path, which: str) -> int:
    """Load a SAVE_FOREVER checkpoint, check that all weights equal its step, and return that."""
    model = nn.Linear(256, 256)
    if which == "best" and best_checkpoint(run_dir) is None:
        return 0
    info = load_checkpoint(run_dir, model=model, which=which)
    assert info.metrics == {"step": info.step}
    assert all(torch.all(param == info.step) for param in model.parameters())
    return info.step


def _latest_step(run_dir: Path) -> int:
    """The step in the name of the latest checkpoint (its files may be gone by the time we look)."""
    path = latest_checkpoint(run_dir)
    return 0 if path is None else int(path.name.split("-")[1])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_model_file_is_detected(tmp_path: Path, damage: str) -> None:
    path = Trainer(seed=0).save(tmp_path, step=1)
    data = bytearray((path / "model.safetensors").read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[-5] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        Trainer(seed=0).load(tmp_path)


def test_missing_file_and_unknown_version_are_reported(tmp_path: Path) -> None:
    path = Trainer(seed=0).save(tmp_path, step=1)
    (path / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match="rng.safetensors is missing"):
        Trainer(seed=0).load(path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="unknown format version 99"):
        Trainer(seed=0).load(path)


def test_missing_optimizer_state_is_reported(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    save_checkpoint(tmp_path, model=trainer.model, step=1, epoch=0, config={}, metrics={})
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(tmp_path, model=trainer.model, optimizer=trainer.optimizer)


def test_model_mismatch_names_keys_and_shapes(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    trainer.save(tmp_path, step=1)
    other = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path, model=other)
    message = str(error.value)
    assert "missing keys ['2.bias', '2.weight']" in message
    assert "unexpected keys ['3.bias', '3.weight']" in message
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    wider = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(), nn.Linear(8, 1))
    expected = r"wrong shapes \['0.bias \(file \(16,\), model \(8,\)\)'"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path, model=wider)


class PlantedPayload:
    """Unpickling this object creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickle_planted_as_model_file_is_rejected_without_unpickling(tmp_path: Path) -> None:
    path = Trainer(seed=0).save(tmp_path, step=1)
    marker = tmp_path / "unpickled"
    model_file = path / "model.safetensors"
    torch.save({"0.weight": torch.zeros(16, 4), "payload": PlantedPayload(marker)}, model_file)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Trainer(seed=0).load(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"]["model.safetensors"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        Trainer(seed=0).load(path)
    assert not marker.exists()


def test_state_that_is_not_json_is_rejected_before_writing(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    trainer.scheduler.lr_lambdas = [object()]
    with pytest.raises(InputError, match=r"scheduler.lr_lambdas.0 is of type object"):
        save_checkpoint(
            tmp_path, model=trainer.model, scheduler=trainer.scheduler,
            step=1, epoch=0, config={}, metrics={},
        )
    with pytest.raises(InputError, match="metrics.loss is a tensor"):
        save_checkpoint(
            tmp_path, model=trainer.model, step=1, epoch=0, config={},
            metrics={"loss": torch.tensor(1.0)},
        )
    assert latest_checkpoint(tmp_path) is None


def test_rng_state_alone_and_unknown_generator() -> None:
    generator = torch.Generator().manual_seed(3)
    state = capture_rng_state({"data": generator})
    draws = _draws(generator)
    restore_rng_state(state, {"data": generator})
    _assert_same_draws(_draws(generator), draws)
    with pytest.raises(CheckpointError, match=r"no RNG state saved for generators \['other'\]"):
        restore_rng_state(state, {"other": generator})
