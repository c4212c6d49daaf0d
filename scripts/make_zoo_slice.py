"""One-off packaging step: write ``src/deqshield/zoo/data/DATASET-test-256.safetensors``, the
first 256 images and labels of the official test set of DATASET (``mnist`` or
``fashion-mnist``), read (md5-checked) with deqshield's own loader. Usage:
``python scripts/make_zoo_slice.py DATASET DATA_DIR``; prints the file's sha256 (to be written
into ``deqshield.zoo.slices.SLICES`` and the data folder's README)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import safetensors.torch
import torch

from deqshield.data.mnist import load_fashion_mnist, load_mnist

COUNT = 256
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
DATA = Path(__file__).resolve().parents[1] / "src/deqshield/zoo/data"


def main(dataset: str, data_dir: str) -> None:
    test = LOADERS[dataset]("test", data_dir)
    images = (test.images[:COUNT] * 255).round().to(torch.uint8).contiguous()
    assert torch.equal(images.float() / 255, test.images[:COUNT])
    labels = test.labels[:COUNT].to(torch.uint8).contiguous()
    target = DATA / f"{dataset}-test-{COUNT}.safetensors"
    target.write_bytes(safetensors.torch.save({"images": images, "labels": labels}))
    print(hashlib.sha256(target.read_bytes()).hexdigest(), target.stat().st_size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split(" Usage:")[0])
    parser.add_argument("dataset", choices=sorted(LOADERS))
    parser.add_argument("data_dir", help="folder with the official test set files")
    args = parser.parse_args()
    main(args.dataset, args.data_dir)
