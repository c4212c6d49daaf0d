"""Model weights to and from safetensors bytes, and the checked reads every checkpoint file
goes through: nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from deqshield.errors import CheckpointError


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def tensor_copies(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict: safetensors rejects shared or strided storage."""
    return {key: contiguous_copy(value) for key, value in model.state_dict().items()}


def contiguous_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached contiguous CPU copy of ``tensor`` that shares no storage."""
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def check_model_keys(
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


def parse_safetensors(data: bytes, source: Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data``; :class:`CheckpointError` names ``source`` if invalid."""
    try:
        return safetensors.torch.load(data)
    except SafetensorError as error:
        raise CheckpointError(f"{source} is not a valid safetensors file: {error}") from error


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``; :class:`CheckpointError` if it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from error


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`CheckpointError` if it is not one."""
    try:
        value = json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value
