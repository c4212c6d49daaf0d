"""Crash-safe training checkpoints: tensors in safetensors, everything else in JSON.

``run_dir/checkpoints/`` holds ``index.json`` (``latest``, ``best`` and the ``retained`` names)
and one directory per checkpoint, e.g. ``step-00000123/`` with ``model.safetensors``,
``optimizer.safetensors``, ``scheduler.safetensors``, ``rng.safetensors`` and ``meta.json``
(format version, step, epoch, config, metrics, sha256 of each tensor file, non-tensor state).

A checkpoint is written into a hidden staging directory, fsynced and renamed into place; only
then is ``index.json`` replaced (staging file, fsync, ``os.replace``), so a kill at any moment
leaves ``index.json`` naming complete checkpoints only.  Whatever it does not name is a leftover
of an interrupted save and is deleted by the next save, so a run directory must have a single
writer.  Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch.optim.lr_scheduler import LRScheduler

from deqshield.io import atomic
from deqshield.errors import CheckpointError, InputError

FORMAT_VERSION = 1
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_WEIGHTS_METADATA_KEY = "deqshield"
NamedGenerators = Mapping[str, torch.Generator]


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` returns besides the objects it restored in place."""

    path: Path
    step: int
    epoch: int
    config: dict[str, Any]
    metrics: dict[str, Any]


def capture_rng_state(extra_generators: NamedGenerators | None = None) -> dict[str, Any]:
    """Return the states of ``random``, ``numpy.random``, torch (CPU, CUDA) and extra generators."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: gen.get_state() for name, gen in (extra_generators or {}).items()},
    }


def restore_rng_state(
    state: Mapping[str, Any], extra_generators: NamedGenerators | None = None
) -> None:
    """Restore a :func:`capture_rng_state` result, extra generators matched by name.

    CUDA states are restored only when as many CUDA devices are visible as were saved, so a GPU
    checkpoint still loads on a CPU-only machine.
    """
    extra_generators = extra_generators or {}
    if missing := sorted(extra_generators.keys() - state["generators"].keys()):
        saved = sorted(state["generators"])
        raise CheckpointError(f"no RNG state saved for generators {missing}; saved: {saved}")
    random.setstate(state["python"])
    key = np.asarray(state["numpy"]["state"]["key"], dtype=np.uint32)
    np.random.set_state({**state["numpy"], "state": {**state["numpy"]["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in extra_generators.items():
        generator.set_state(state["generators"][name])


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
    files = {"model.safetensors": safetensors.torch.save(_tensor_copies(model))}
    skeletons: dict[str, Any] = {}
    for name, state in states.items():
        tensors: dict[str, torch.Tensor] = {}
        skeletons[name] = _to_json(state, name, tensors)
        files[f"{name}.safetensors"] = safetensors.torch.save(tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "config": _to_json(dict(config), "config", None),
        "metrics": _to_json(dict(metrics), "metrics", None),
        "sha256": {file: hashlib.sha256(data).hexdigest() for file, data in files.items()},
        "state": skeletons,
    }
    files["meta.json"] = json.dumps(meta, indent=1).encode()
    root = Path(run_dir) / "checkpoints"
    return _publish(root, f"step-{int(step):08d}", files, is_best=is_best, keep_last=keep_last)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Return the directory of the newest complete checkpoint of ``run_dir``, or None."""
    return _indexed_checkpoint(Path(run_dir), "latest")


def best_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Return the directory of the checkpoint last saved with ``is_best=True``, or None."""
    return _indexed_checkpoint(Path(run_dir), "best")


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
        found = _indexed_checkpoint(path, which)
        if found is None:
            raise CheckpointError(f"{path} has no {which} checkpoint")
        path = found
    meta, tensors = _read_checkpoint(path)
    _check_model_keys(model, tensors["model"], path / "model.safetensors")
    states = {
        name: _from_json(skeleton, tensors[name], path / f"{name}.safetensors")
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
    config = _from_json(meta["config"], {}, path / "meta.json")
    metrics = _from_json(meta["metrics"], {}, path / "meta.json")
    return CheckpointInfo(path, meta["step"], meta["epoch"], config, metrics)


def save_weights(
    path: str | os.PathLike[str], model: torch.nn.Module, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Atomically export the model weights as one safetensors file carrying JSON ``metadata``."""
    encoded = json.dumps(_to_json(dict(metadata or {}), "metadata", None))
    data = safetensors.torch.save(_tensor_copies(model), metadata={_WEIGHTS_METADATA_KEY: encoded})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.replace_atomically(path, data)
    return path


def load_weights(path: str | os.PathLike[str], model: torch.nn.Module) -> dict[str, Any]:
    """Load weights written by :func:`save_weights` into ``model`` and return their metadata."""
    path = Path(path)
    data = _read_bytes(path)
    tensors = _parse_safetensors(data, path)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    encoded = header.get("__metadata__", {}).get(_WEIGHTS_METADATA_KEY)
    if encoded is None:
        raise CheckpointError(f"{path} lacks {_WEIGHTS_METADATA_KEY!r} metadata of save_weights")
    _check_model_keys(model, tensors, path)
    model.load_state_dict(tensors)
    return _from_json(json.loads(encoded), {}, path)


def _tensor_copies(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict: safetensors rejects shared or strided storage."""
    return {key: _contiguous_copy(value) for key, value in model.state_dict().items()}


def _contiguous_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _to_json(value: Any, where: str, tensors: dict[str, torch.Tensor] | None) -> Any:
    """Encode ``value`` as JSON data, moving tensors into ``tensors`` keyed by their dotted path.

    Tensors, tuples and dicts with int keys (or a lone tag-like key) become single-key tagged
    objects that :func:`_from_json` decodes.  ``tensors=None`` forbids tensors.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise InputError(f"{where} is a tensor; store a number (tensor.item()) or a list")
        if where in tensors:
            raise InputError(f"{where} names two different tensors")
        tensors[where] = _contiguous_copy(value)
        return {_TENSOR: where}
    if isinstance(value, (list, tuple)):
        items = [_to_json(item, f"{where}.{i}", tensors) for i, item in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int)) for key in value):
            raise InputError(f"{where} has dict keys that are neither str nor int: {list(value)}")
        encoded = {key: _to_json(item, f"{where}.{key}", tensors) for key, item in value.items()}
        tag_like = encoded.keys() & {_TENSOR, _TUPLE, _ITEMS}
        if all(isinstance(key, str) for key in value) and not tag_like:
            return encoded
        return {_ITEMS: [[key, item] for key, item in encoded.items()]}
    raise InputError(f"{where} is of type {type(value).__name__}, which JSON cannot hold")


def _from_json(value: Any, tensors: Mapping[str, torch.Tensor], source: Path) -> Any:
    """Invert :func:`_to_json`; ``source`` names the tensor file in error messages."""
    if isinstance(value, list):
        return [_from_json(item, tensors, source) for item in value]
    if not isinstance(value, dict):
        return value
    tag, payload = next(iter(value.items())) if len(value) == 1 else (None, None)
    if tag == _TENSOR:
        if payload not in tensors:
            raise CheckpointError(f"{source} lacks tensor {payload!r} named in meta.json")
        return tensors[payload]
    if tag == _TUPLE:
        return tuple(_from_json(item, tensors, source) for item in payload)
    if tag == _ITEMS:
        return {key: _from_json(item, tensors, source) for key, item in payload}
    return {key: _from_json(item, tensors, source) for key, item in value.items()}


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read meta.json and each tensor file it lists (keyed by stem), verifying their sha256."""
    meta = _read_json(path / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version")
        raise CheckpointError(f"{path / 'meta.json'} has unknown format version {version!r}")
    tensors = {}
    for file, digest in meta.get("sha256", {}).items():
        data = _read_bytes(path / file)
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{path / file} is corrupt or truncated: sha256 mismatch")
        tensors[file.removesuffix(".safetensors")] = _parse_safetensors(data, path / file)
    state = meta.get("state", {})
    if "rng" not in state or tensors.keys() != {"model", *state}:
        raise CheckpointError(f"{path / 'meta.json'} is malformed: it lists the wrong files")
    return meta, tensors


def _check_model_keys(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: Path
) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or wrongly shaped key."""
    expected = model.state_dict()
    wrong = [
        f"{key} (file {tuple(tensors[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(expected.keys() & tensors.keys())
        if tensors[key].shape != expected[key].shape
    ]
    problems = {
        "missing keys": sorted(expected.keys() - tensors.keys()),
        "unexpected keys": sorted(tensors.keys() - expected.keys()),
        "wrong shapes": wrong,
    }
    if any(problems.values()):
        details = "; ".join(f"{kind} {keys}" for kind, keys in problems.items() if keys)
        raise CheckpointError(f"{source} does not match the model: {details}")


def _parse_safetensors(data: bytes, source: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except SafetensorError as error:
        raise CheckpointError(f"{source} is not a valid safetensors file: {error}") from error


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value


def _read_index(root: Path) -> dict[str, Any]:
    """Read ``root/index.json``; no index means no checkpoints yet."""
    if not (root / "index.json").exists():
        return {"format_version": FORMAT_VERSION, "latest": None, "best": None, "retained": []}
    index = _read_json(root / "index.json")
    if index.get("format_version") != FORMAT_VERSION or not isinstance(index.get("retained"), list):
        raise CheckpointError(f"{root / 'index.json'} is malformed or of an unknown format version")
    return index


def _indexed_checkpoint(run_dir: Path, which: Literal["latest", "best"]) -> Path | None:
    name = _read_index(run_dir / "checkpoints")[which]
    return None if name is None else run_dir / "checkpoints" / name


def _publish(
    root: Path, name: str, files: Mapping[str, bytes], *, is_best: bool, keep_last: int
) -> Path:
    """Write ``files`` as checkpoint ``root/name`` (``name-1``... if taken), then update the index.

    Leftovers of interrupted saves are deleted first, and checkpoints the new index no longer
    names are deleted last.
    """
    root.mkdir(parents=True, exist_ok=True)
    index = _read_index(root)
    _remove_unreferenced(root, index)
    base, suffix = name, 0
    while (root / name).exists():
        suffix += 1
        name = f"{base}-{suffix}"
    staging = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for file, data in files.items():
            atomic.write_durably(staging / file, data)
        atomic.fsync_directory(staging)
        os.replace(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic.fsync_directory(root)
    index = {
        "format_version": FORMAT_VERSION,
        "latest": name,
        "best": name if is_best else index["best"],
        "retained": [*index["retained"], name][-keep_last:],
    }
    atomic.replace_atomically(root / "index.json", json.dumps(index, indent=1).encode())
    _remove_unreferenced(root, index)
    return root / name


def _remove_unreferenced(root: Path, index: Mapping[str, Any]) -> None:
    """Delete staging leftovers and the checkpoints that ``index`` does not name."""
    referenced = {*index["retained"], index["best"]}
    for entry in root.iterdir():
        stale = entry.name.startswith("step-") and entry.name not in referenced
        if stale or entry.name.startswith(".tmp-"):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
