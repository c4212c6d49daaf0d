"""The checkpoint index and crash-safe publishing.

``run_dir/checkpoints/index.json`` names the ``latest``, ``best`` and ``retained`` checkpoints.
A checkpoint is written into a hidden staging directory, fsynced and renamed into place; only
then is ``index.json`` replaced (staging file, fsync, ``os.replace``), so a kill at any moment
leaves ``index.json`` naming complete checkpoints only.  Whatever it does not name is a leftover
of an interrupted save and is deleted by the next save, so a run directory must have a single
writer.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from deqshield.errors import CheckpointError
from deqshield.io import atomic
from deqshield.io.weights import read_json

FORMAT_VERSION = 1


def read_index(root: Path) -> dict[str, Any]:
    """Read ``root/index.json``; no index means no checkpoints yet."""
    if not (root / "index.json").exists():
        return {"format_version": FORMAT_VERSION, "latest": None, "best": None, "retained": []}
    index = read_json(root / "index.json")
    if index.get("format_version") != FORMAT_VERSION or not isinstance(index.get("retained"), list):
        raise CheckpointError(f"{root / 'index.json'} is malformed or of an unknown format version")
    return index


def indexed_checkpoint(run_dir: Path, which: Literal["latest", "best"]) -> Path | None:
    """The directory the index of ``run_dir`` names as ``which``, or None."""
    name = read_index(run_dir / "checkpoints")[which]
    return None if name is None else run_dir / "checkpoints" / name


def publish(
    root: Path, name: str, files: Mapping[str, bytes], *, is_best: bool, keep_last: int
) -> Path:
    """Write ``files`` as checkpoint ``root/name`` (``name-1``... if taken), then update the index.

    Leftovers of interrupted saves are deleted first, and checkpoints the new index no longer
    names are deleted last.
    """
    root.mkdir(parents=True, exist_ok=True)
    index = read_index(root)
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
