"""One-off packaging step: write ``src/deqshield/zoo/data/mnist-test-256.safetensors``, the
first 256 images and labels of the official MNIST test set, read (md5-checked) with
deqshield's own MNIST loader. Usage: ``python scripts/make_zoo_mnist_slice.py MNIST_DIR``;
prints the file's sha256 (to be written into ``deqshield.zoo.slices.SLICES`` and the data
folder's README)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import safetensors.torch
import torch

from deqshield.data.mnist import load_mnist

COUNT = 256
TARGET = Path(__file__).resolve().parents[1] / "src/deqshield/zoo/data/mnist-test-256.safetensors"


def main(mnist_dir: str) -> None:
    test = load_mnist("test", mnist_dir)
    images = (test.images[:COUNT] * 255).round().to(torch.uint8).contiguous()
    assert torch.equal(images.float() / 255, test.images[:COUNT])
    labels = test.labels[:COUNT].to(torch.uint8).contiguous()
    TARGET.write_bytes(safetensors.torch.save({"images": images, "labels": labels}))
    print(hashlib.sha256(TARGET.read_bytes()).hexdigest(), TARGET.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])
