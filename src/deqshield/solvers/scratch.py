"""Scratch buffers for solver histories (Anderson's f and g rows, Broyden's low-rank terms).

A solve of a batch (B, d) with memory m needs a few (B, m, d) buffers: tens of MiB for an image
batch. On the CPU, glibc returns such blocks to the kernel when they are freed, so allocating
them afresh every solve page-faults them in again each time (measured 1.5-24 ms per 20 MiB
buffer on the benchmark machines, a sizeable part of an 8-step solve; see
``benchmarks/README.md``). :func:`scratch` lends buffers from a small pool instead: a solve
takes them on entry and gives them back on exit, so nested solves (a callback that solves)
get buffers of their own. The pool keeps at most :data:`POOL_BYTES` bytes
(:func:`release_scratch` empties it); on other devices
(CUDA's caching allocator already reuses memory) buffers are simply allocated. Contents are
undefined: solvers read only the slots they have written.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor

POOL_BYTES = 256 * 2 ** 20

_Key = tuple[tuple[int, ...], torch.dtype]


class _Pool:
    """Free CPU buffers by (shape, dtype), least recently returned evicted first."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.free: OrderedDict[_Key, list[Tensor]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        key = (shape, like.dtype)
        with self.lock:
            stack = self.free.get(key)
            if stack:
                buffer = stack.pop()
                if not stack:
                    del self.free[key]
                self.bytes -= _nbytes(buffer)
                return buffer
        return like.new_empty(shape)

    def give(self, buffer: Tensor) -> None:
        size = _nbytes(buffer)
        if size > self.max_bytes:
            return
        with self.lock:
            key = (tuple(buffer.shape), buffer.dtype)
            self.free.setdefault(key, []).append(buffer)
            self.free.move_to_end(key)
            self.bytes += size
            while self.bytes > self.max_bytes:
                oldest_key, oldest = next(iter(self.free.items()))
                self.bytes -= _nbytes(oldest.pop(0))
                if not oldest:
                    del self.free[oldest_key]


    def clear(self) -> None:
        with self.lock:
            self.free.clear()
            self.bytes = 0


def _nbytes(buffer: Tensor) -> int:
    return buffer.numel() * buffer.element_size()


_POOL = _Pool(POOL_BYTES)


@contextmanager
def scratch(like: Tensor, shapes: Sequence[tuple[int, ...]]) -> Iterator[list[Tensor]]:
    """Uninitialised buffers of ``shapes`` with the dtype and device of ``like``, lent for the
    duration of the ``with`` block (pooled on the CPU)."""
    if like.device.type != "cpu":
        yield [like.new_empty(shape) for shape in shapes]
        return
    buffers = [_POOL.take(tuple(shape), like) for shape in shapes]
    try:
        yield buffers
    finally:
        for buffer in buffers:
            _POOL.give(buffer)


def release_scratch() -> None:
    """Drop every pooled buffer (their memory goes back to the allocator)."""
    _POOL.clear()
