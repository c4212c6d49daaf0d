"""Crash-safe training checkpoints: tensors in safetensors, everything else in JSON.

``run_dir/checkpoints/`` holds ``index.json`` (``latest``, ``best`` and the ``retained`` names;
see :mod:`deqshield.io.publish`) and one directory per checkpoint, e.g. ``step-00000123/`` with
``model.safetensors``, ``optimizer.safetensors``, ``scheduler.safetensors``, ``rng.safetensors``
and ``meta.json`` (format version, step, epoch, config, metrics, sha256 of each tensor file,
non-tensor state encoded by :mod:`deqshield.io.codec`). Loading reads safetensors and JSON only:
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch.optim.lr_scheduler import LRScheduler

from deqshield.errors import CheckpointError, InputError
from deqshield.io.codec import from_json, to_json
from deqshield.io.publish import FORMAT_VERSION, indexed_checkpoint, publish
from deqshield.io.rng import NamedGenerators, capture_rng_state, restore_rng_state
from deqshield.io.weights import (check_model_keys, parse_safetensors, read_bytes, read_json,
                                  tensor_copies)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` returns besides the objects it restored in place."""

    path: Path
    step: int
    epoch: int
    config: dict[str, Any]
    metrics: dict[str, Any]


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    step: int,
    epoch: int,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    is_best: bool = False,
    keep_last: int = 2,
    extra_generators: NamedGenerators | None = None,
) -> Path:
    """Atomically write a checkpoint under ``run_dir/checkpoints`` and return its directory.

    The newest ``keep_last`` checkpoints are kept, plus the latest one saved with ``is_best``.
    ``config``, ``metrics`` and the scheduler state must be JSON-able (tuples and int keys are
    fine; tensors only in the scheduler state); otherwise :class:`InputError` names the
    offending value and nothing is written.
    """
    if keep_last < 1:
        raise InputError(f"keep_last must be at least 1, got {keep_last}")
    states: dict[str, Any] = {"rng": capture_rng_state(extra_generators)}
    if optimizer is not None:
        states["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        states["scheduler"] = scheduler.state_dict()
    files = {"model.safetensors": safetensors.torch.save(tensor_copies(model))}
    skeletons: dict[str, Any] = {}
    for name, state in states.items():
        tensors: dict[str, torch.Tensor] = {}
        skeletons[name] = to_json(state, name, tensors)
        files[f"{name}.safetensors"] = safetensors.torch.save(tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "config": to_json(dict(config), "config", None),
        "metrics": to_json(dict(metrics), "metrics", None),
        "sha256": {file: hashlib.sha256(data).hexdigest() for file, data in files.items()},
        "state": skeletons,
    }
    files["meta.json"] = json.dumps(meta, indent=1).encode()
    root = Path(run_dir) / "checkpoints"
    return publish(root, f"step-{int(step):08d}", files, is_best=is_best, keep_last=keep_last)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Return the directory of the newest complete checkpoint of ``run_dir``, or None."""
    return indexed_checkpoint(Path(run_dir), "latest")


def best_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Return the directory of the checkpoint last saved with ``is_best=True``, or None."""
    return indexed_checkpoint(Path(run_dir), "best")


def load_checkpoint(
    path_or_run_dir: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    which: Literal["latest", "best"] = "latest",
    restore_rng: bool = True,
    extra_generators: NamedGenerators | None = None,
) -> CheckpointInfo:
    """Load a checkpoint directory, or the ``which`` checkpoint of a run directory, in place.

    File hashes, model keys and shapes, and generator names are checked before anything is
    modified; an optimizer that does not match the saved state is noticed after the RNG state
    was restored.  Tensors are read on the CPU and ``load_state_dict`` moves them to the device
    of the model and optimizer.  Raises :class:`CheckpointError` on any problem.
    """
    path = Path(path_or_run_dir)
    if (path / "checkpoints").is_dir():
        if which not in ("latest", "best"):
            raise InputError(f"which must be 'latest' or 'best', got {which!r}")
        found = indexed_checkpoint(path, which)
        if found is None:
            raise CheckpointError(f"{path} has no {which} checkpoint")
        path = found
    meta, tensors = _read_checkpoint(path)
    check_model_keys(model, tensors["model"], path / "model.safetensors")
    states = {
        name: from_json(skeleton, tensors[name], path / f"{name}.safetensors")
        for name, skeleton in meta["state"].items()
    }
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None and name not in states:
            raise CheckpointError(f"{path} holds no {name} state")
    if restore_rng:
        restore_rng_state(states["rng"], extra_generators)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(states["optimizer"])
        except ValueError as error:
            raise CheckpointError(f"{path} does not match the optimizer: {error}") from error
    model.load_state_dict(tensors["model"])
    if scheduler is not None:
        scheduler.load_state_dict(states["scheduler"])
    config = from_json(meta["config"], {}, path / "meta.json")
    metrics = from_json(meta["metrics"], {}, path / "meta.json")
    return CheckpointInfo(path, meta["step"], meta["epoch"], config, metrics)


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read meta.json and each tensor file it lists (keyed by stem), verifying their sha256."""
    meta = read_json(path / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version")
        raise CheckpointError(f"{path / 'meta.json'} has unknown format version {version!r}")
    tensors = {}
    for file, digest in meta.get("sha256", {}).items():
        data = read_bytes(path / file)
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{path / file} is corrupt or truncated: sha256 mismatch")
        tensors[file.removesuffix(".safetensors")] = parse_safetensors(data, path / file)
    state = meta.get("state", {})
    if "rng" not in state or tensors.keys() != {"model", *state}:
        raise CheckpointError(f"{path / 'meta.json'} is malformed: it lists the wrong files")
    return meta, tensors
