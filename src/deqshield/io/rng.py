"""Capture and restore every random number generator a training step draws from."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from deqshield.errors import CheckpointError

NamedGenerators = Mapping[str, torch.Generator]


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
