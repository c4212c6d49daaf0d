"""Crash-safe file writes: a file is written beside its destination, fsynced and renamed over
it with ``os.replace``, so a reader sees the old content or the new one, never a torn file,
and a failed write (full disk, read-only file system) leaves the old file untouched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Union


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(path: Path) -> None:
    """Make entries created or renamed in ``path`` durable (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: Union[bytes, str]) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    staging = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write_durably(staging, data.encode() if isinstance(data, str) else data)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path
