"""The JSON/tensor codec of checkpoints: state dicts as JSON skeletons plus named tensors.

Tensors, tuples and dicts with int keys (or a lone tag-like key) become single-key tagged JSON
objects, so any optimizer or scheduler state round-trips exactly without pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqshield.errors import CheckpointError, InputError
from deqshield.io.weights import contiguous_copy

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def to_json(value: Any, where: str, tensors: dict[str, torch.Tensor] | None) -> Any:
    """Encode ``value`` as JSON data, moving tensors into ``tensors`` keyed by their dotted path.

    Tensors, tuples and dicts with int keys (or a lone tag-like key) become single-key tagged
    objects that :func:`from_json` decodes.  ``tensors=None`` forbids tensors.
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
        tensors[where] = contiguous_copy(value)
        return {_TENSOR: where}
    if isinstance(value, (list, tuple)):
        items = [to_json(item, f"{where}.{i}", tensors) for i, item in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int)) for key in value):
            raise InputError(f"{where} has dict keys that are neither str nor int: {list(value)}")
        encoded = {key: to_json(item, f"{where}.{key}", tensors) for key, item in value.items()}
        tag_like = encoded.keys() & {_TENSOR, _TUPLE, _ITEMS}
        if all(isinstance(key, str) for key in value) and not tag_like:
            return encoded
        return {_ITEMS: [[key, item] for key, item in encoded.items()]}
    raise InputError(f"{where} is of type {type(value).__name__}, which JSON cannot hold")


def from_json(value: Any, tensors: Mapping[str, torch.Tensor], source: Path) -> Any:
    """Invert :func:`to_json`; ``source`` names the tensor file in error messages."""
    if isinstance(value, list):
        return [from_json(item, tensors, source) for item in value]
    if not isinstance(value, dict):
        return value
    tag, payload = next(iter(value.items())) if len(value) == 1 else (None, None)
    if tag == _TENSOR:
        if payload not in tensors:
            raise CheckpointError(f"{source} lacks tensor {payload!r} named in meta.json")
        return tensors[payload]
    if tag == _TUPLE:
        return tuple(from_json(item, tensors, source) for item in payload)
    if tag == _ITEMS:
        return {key: from_json(item, tensors, source) for key, item in payload}
    return {key: from_json(item, tensors, source) for key, item in value.items()}
