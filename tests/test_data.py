"""Tests of deqshield.data on small data sets the tests write in the official formats."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deqshield.data import ArrayDataset, dev_split, download_file, load_dataset
from deqshield.data import cifar10, mnist, tiny_imagenet
from deqshield.errors import DataError, InputError

RNG = np.random.default_rng(1234)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_official(monkeypatch: pytest.MonkeyPatch, table: dict[str, str], *paths: Path) -> None:
    """Register the md5 of each test-made file as its published checksum."""
    for path in paths:
        monkeypatch.setitem(table, path.name, md5_of(path))


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    magic = mnist.IMAGES_MAGIC if array.ndim == 3 else mnist.LABELS_MAGIC
    header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_split(
    directory: Path, split: str, images: np.ndarray, labels: np.ndarray
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = tuple(directory / name for name in mnist.FILES[split])
    for path, array in zip(paths, (images, labels)):
        path.write_bytes(gzip.compress(idx_bytes(array)))
    return paths  # type: ignore[return-value]


@pytest.fixture
def data_mnist_train(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A flat MNIST folder with a 6-image train split (md5s not yet registered)."""
    images = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 7], dtype=np.uint8)
    write_idx_split(tmp_path / "mnist", "train", images, labels)
    return tmp_path / "mnist", images, labels


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_idx_loading_parses_images_and_labels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, layout: str
) -> None:
    images = RNG.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = np.array([5, 0, 9, 2], dtype=np.uint8)
    paths = write_idx_split(tmp_path / name, "test", images, labels)
    make_official(monkeypatch, mnist.MD5SUMS[name], *paths)
    root = tmp_path / name if layout == "flat" else tmp_path

    dataset = load_dataset(name, "test", root=root)

    assert dataset.images.dtype == torch.float32 and dataset.labels.dtype == torch.int64
    assert dataset.images.shape == (4, 1, 28, 28) and dataset.input_shape == (1, 28, 28)
    assert torch.equal(dataset.images[:, 0] * 255, torch.from_numpy(images).float())
    assert dataset.labels.tolist() == [5, 0, 9, 2]
    assert dataset.num_classes == 10 and len(dataset.class_names) == 10
    assert dataset.name == f"{name}/test" and len(dataset) == 4


def test_missing_files_error_names_files_directory_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "train", root=tmp_path)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert str(tmp_path) in message and "download=True" in message


def test_checksum_mismatch_names_file_and_both_md5s(data_mnist_train) -> None:
    directory, _, _ = data_mnist_train
    images_path = directory / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "train", root=directory)
    message = str(caught.value)
    assert str(images_path) in message
    assert mnist.MD5SUMS["mnist"][images_path.name] in message and md5_of(images_path) in message


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda data: data[: len(data) // 2], "not a valid gzip file"),
        (lambda data: gzip.compress(gzip.decompress(data)[:-5]), "announces"),
        (lambda data: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(data)[4:]), "magic"),
        (lambda data: gzip.compress(gzip.decompress(data)[:10]), "truncated IDX header"),
    ],
    ids=["truncated-gzip", "truncated-body", "bad-magic", "truncated-header"],
)
def test_corrupt_idx_file_is_rejected_even_with_matching_md5(
    monkeypatch: pytest.MonkeyPatch, data_mnist_train, corrupt, problem: str
) -> None:
    directory, _, _ = data_mnist_train
    images_path = directory / "train-images-idx3-ubyte.gz"
    images_path.write_bytes(corrupt(images_path.read_bytes()))
    make_official(monkeypatch, mnist.MD5SUMS["mnist"], *directory.iterdir())
    with pytest.raises(DataError, match=problem) as caught:
        load_dataset("mnist", "train", root=directory)
    assert str(images_path) in str(caught.value)


def test_label_count_must_match_image_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    paths = write_idx_split(tmp_path, "train", images, np.array([1, 2], dtype=np.uint8))
    make_official(monkeypatch, mnist.MD5SUMS["mnist"], *paths)
    with pytest.raises(DataError, match="2 labels for the 3 images"):
        load_dataset("mnist", "train", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def python2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the official files (protocol 2)."""

    def text(value: bytes) -> bytes:
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def integer(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    return b"".join([
        b"\x80\x02}(", text(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n",
        integer(0), b"\x85", text(b"b"), b"\x87R(", integer(1),
        integer(data.shape[0]), integer(data.shape[1]), b"\x86",
        b"cnumpy\ndtype\n", text(b"u1"), integer(0), integer(1), b"\x87R(",
        integer(3), text(b"|"), b"NNN", integer(-1), integer(-1), integer(0), b"tb",
        b"\x89", text(data.tobytes()), b"tb",
        text(b"labels"), b"](", *(integer(label) for label in labels), b"eu.",
    ])


def write_cifar_split(
    directory: Path, split: str, num_per_batch: int = 3, python2: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Write the batch files of ``split``; return all their data rows and labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for filename in cifar10.FILES[split]:
        data = RNG.integers(0, 256, size=(num_per_batch, 3072), dtype=np.uint8)
        batch_labels = RNG.integers(0, 10, size=num_per_batch).tolist()
        if python2:
            content = python2_batch_pickle(data, batch_labels)
        else:
            content = pickle.dumps({b"data": data, b"labels": batch_labels}, protocol=4)
        (directory / filename).write_bytes(content)
        rows.append(data)
        labels.extend(batch_labels)
    return np.concatenate(rows), np.array(labels)


@pytest.mark.parametrize("python2", [True, False], ids=["python2-pickle", "numpy2-pickle"])
def test_cifar10_batches_are_parsed_channel_major(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, python2: bool
) -> None:
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    rows, labels = write_cifar_split(batches, "train", python2=python2)
    make_official(monkeypatch, cifar10.MD5SUMS, *batches.iterdir())

    dataset = load_dataset("cifar10", "train", root=tmp_path)

    assert dataset.images.shape == (15, 3, 32, 32) and dataset.images.dtype == torch.float32
    assert dataset.labels.tolist() == labels.tolist()
    image, channel, row, column = 7, 2, 5, 30
    expected = rows[image, channel * 1024 + row * 32 + column] / 255
    assert dataset.images[image, channel, row, column].item() == pytest.approx(expected)
    assert dataset.class_names[0] == "airplane" and dataset.num_classes == 10


class RunsCode:
    """Unpickling this creates ``marker``: stands for a pickle that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_cifar10_unpickler_refuses_code_execution(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "code-was-executed"
    batch = tmp_path / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": RunsCode(marker), b"labels": [0]}))
    make_official(monkeypatch, cifar10.MD5SUMS, batch)
    with pytest.raises(DataError, match="refusing to load global (posix|os).makedirs"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_cifar10_checksum_is_verified_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "code-was-executed"
    (tmp_path / "test_batch").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(DataError, match="checksum mismatch.*40351d587109b95175f43aff81a1287e"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=4),
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=4),
        pickle.dumps([1, 2, 3], protocol=4),
        b"\x80\x02}(U\x04data",
    ],
    ids=["label-out-of-range", "wrong-row-size", "not-a-dict", "truncated"],
)
def test_cifar10_malformed_batch_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes
) -> None:
    batch = tmp_path / "test_batch"
    batch.write_bytes(content)
    make_official(monkeypatch, cifar10.MD5SUMS, batch)
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- Tiny ImageNet


WNIDS = ("n02", "n01", "n03")


def write_jpeg(path: Path, mode: str = "RGB", size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = RNG.integers(0, 256, size=(size, size, channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode=mode).save(path, format="JPEG")


def write_tiny_imagenet(folder: Path) -> None:
    """Two training images per class (one grayscale) and three validation images."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish\nn02\tsalamander, newt\nn09\tother\n")
    for wnid in WNIDS:
        for index, mode in enumerate(["RGB", "L"]):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", mode)
    annotations = [
        "val_0.JPEG\tn03\t0\t0\t63\t63",
        "val_1.JPEG\tn01\t1\t2\t3\t4",
        "val_2.JPEG\tn02\t0\t0\t9\t9",
    ]
    for line in annotations:
        write_jpeg(folder / "val" / "images" / line.split("\t")[0])
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tiny_imagenet_loads_both_splits_and_caches_decoded_pixels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")

    train = load_dataset("tiny-imagenet", "train", root=tmp_path)
    test = load_dataset("tiny-imagenet", "test", root=tmp_path)

    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.float32
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.images.shape == (3, 3, 64, 64) and test.labels.tolist() == [2, 0, 1]
    assert train.num_classes == 3 and train.class_names == ("goldfish", "salamander, newt", "n03")
    grayscale = train.images[1]
    assert torch.equal(grayscale[0], grayscale[1]) and torch.equal(grayscale[1], grayscale[2])
    caches = sorted(path.name for path in (tmp_path / "tiny-imagenet-200").glob("*.npy"))
    assert len(caches) == 2 and caches[0].startswith("deqshield-test-")

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(tiny_imagenet, "decode_image", no_decoding)
    again = load_dataset("tiny-imagenet", "train", root=tmp_path / "tiny-imagenet-200")
    assert torch.equal(again.images, train.images)


def test_tiny_imagenet_cache_follows_changes_of_the_folder(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    before = load_dataset("tiny-imagenet", "test", root=tmp_path)
    write_jpeg(tmp_path / "val" / "images" / "val_3.JPEG")
    with (tmp_path / "val" / "val_annotations.txt").open("a") as annotations:
        annotations.write("val_3.JPEG\tn02\t0\t0\t1\t1\n")
    after = load_dataset("tiny-imagenet", "test", root=tmp_path)
    assert len(before) == 3 and len(after) == 4
    assert torch.equal(after.images[:3], before.images)


def val_image(folder: Path) -> Path:
    return folder / "val" / "images" / "val_1.JPEG"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda folder: write_jpeg(val_image(folder), size=32), "expected 64x64"),
        (lambda folder: val_image(folder).write_bytes(b"\xff\xd8\xff"), "decode"),
        (lambda folder: val_image(folder).unlink(), "missing image"),
        (
            lambda folder: (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\n"),
            "no known WordNet id",
        ),
    ],
    ids=["wrong-size", "truncated-jpeg", "missing-image", "unknown-class"],
)
def test_tiny_imagenet_damaged_folder_is_rejected(tmp_path: Path, damage, problem: str) -> None:
    write_tiny_imagenet(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=problem):
        load_dataset("tiny-imagenet", "test", root=tmp_path)


def test_tiny_imagenet_missing_folder_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="wnids.txt.*tiny-imagenet-200.*download=True"):
        load_dataset("tiny-imagenet", "train", root=tmp_path)


# ---------------------------------------------------------------- downloads


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def data_http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on a free port; yields its base URL and the folder it serves."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_file_verifies_and_writes_atomically(data_http_server, tmp_path: Path) -> None:
    url, served = data_http_server
    (served / "blob.bin").write_bytes(b"official content" * 1000)
    destination = tmp_path / "downloads"
    expected = md5_of(served / "blob.bin")

    path = download_file("blob.bin", destination, expected, [url + "missing/", url], progress=False)

    assert path == destination / "blob.bin" and path.read_bytes() == b"official content" * 1000
    assert sorted(destination.iterdir()) == [path]
    assert download_file("blob.bin", destination, expected, ["http://unused.invalid/"]) == path


def test_download_with_wrong_checksum_leaves_nothing(data_http_server, tmp_path: Path) -> None:
    url, served = data_http_server
    (served / "blob.bin").write_bytes(b"tampered content")
    destination = tmp_path / "downloads"
    with pytest.raises(DataError, match="blob.bin.*expected md5 0{32}") as caught:
        download_file("blob.bin", destination, "0" * 32, [url], progress=False)
    assert md5_of(served / "blob.bin") in str(caught.value)
    assert list(destination.iterdir()) == []


def test_download_of_truncated_transfer_leaves_nothing(tmp_path: Path) -> None:
    class TruncatingHandler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"partial")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with pytest.raises(DataError, match="could not download blob.bin"):
            download_file(
                "blob.bin", tmp_path, "0" * 32, [f"http://127.0.0.1:{server.server_address[1]}/"],
                progress=False,
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_missing_mnist_files(
    monkeypatch: pytest.MonkeyPatch, data_http_server, tmp_path: Path
) -> None:
    url, served = data_http_server
    images = RNG.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    paths = write_idx_split(served, "test", images, np.array([4, 2], dtype=np.uint8))
    make_official(monkeypatch, mnist.MD5SUMS["fashion-mnist"], *paths)
    root = tmp_path / "data"

    dataset = load_dataset("fashion-mnist", "test", root=root, download=True, mirrors=[url])

    assert dataset.labels.tolist() == [4, 2]
    downloaded = sorted(path.name for path in (root / "fashion-mnist").iterdir())
    assert downloaded == sorted(mnist.FILES["test"])


def test_load_dataset_downloads_and_extracts_cifar10(
    monkeypatch: pytest.MonkeyPatch, data_http_server, tmp_path: Path
) -> None:
    url, served = data_http_server
    batches = tmp_path / "made" / "cifar-10-batches-py"
    _, labels = write_cifar_split(batches, "test")
    make_official(monkeypatch, cifar10.MD5SUMS, *batches.iterdir())
    with tarfile.open(served / cifar10.ARCHIVE, "w:gz") as archive:
        archive.add(batches, arcname="cifar-10-batches-py")
    make_official(monkeypatch, cifar10.MD5SUMS, served / cifar10.ARCHIVE)
    root = tmp_path / "data"

    dataset = load_dataset("cifar10", "test", root=root, download=True, mirrors=[url])

    assert dataset.labels.tolist() == labels.tolist()
    assert sorted(path.name for path in (root / "cifar10").iterdir()) == [
        "cifar-10-batches-py", cifar10.ARCHIVE,
    ]


def test_load_dataset_downloads_and_extracts_tiny_imagenet(
    monkeypatch: pytest.MonkeyPatch, data_http_server, tmp_path: Path
) -> None:
    url, served = data_http_server
    folder = tmp_path / "made" / "tiny-imagenet-200"
    write_tiny_imagenet(folder)
    with zipfile.ZipFile(served / tiny_imagenet.ARCHIVE, "w") as archive:
        for path in folder.rglob("*"):
            archive.write(path, path.relative_to(folder.parent))
    make_official(monkeypatch, tiny_imagenet.MD5SUMS, served / tiny_imagenet.ARCHIVE)

    dataset = load_dataset(
        "tiny-imagenet", "test", root=tmp_path / "data", download=True, mirrors=[url]
    )

    assert dataset.labels.tolist() == [2, 0, 1]
    assert (tmp_path / "data" / "tiny-imagenet" / "tiny-imagenet-200" / "wnids.txt").is_file()


def test_downloaded_archive_with_wrong_checksum_is_not_kept(
    data_http_server, tmp_path: Path
) -> None:
    url, served = data_http_server
    (served / cifar10.ARCHIVE).write_bytes(b"not the official archive")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", "train", root=tmp_path / "data", download=True, mirrors=[url])
    assert list((tmp_path / "data" / "cifar10").iterdir()) == []


# ---------------------------------------------------------------- registry, digits, dev split


def test_unknown_name_and_split_are_input_errors() -> None:
    with pytest.raises(InputError, match="mnist, fashion-mnist, cifar10, tiny-imagenet, digits"):
        load_dataset("imagenet", "train")
    with pytest.raises(InputError, match="valid splits: train, test"):
        load_dataset("digits", "validation")


def test_digits_has_a_fixed_disjoint_split() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert torch.equal(load_dataset("digits", "test").images, test.images)
    train_rows = {row.numpy().tobytes() for row in train.images.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in test.images.flatten(1))


def labelled_dataset(num: int = 200) -> ArrayDataset:
    images = torch.arange(num, dtype=torch.float32).div(num).reshape(num, 1, 1, 1)
    labels = torch.arange(num) % 4
    return ArrayDataset(images, labels, 4, "toy/train", ("a", "b", "c", "d"))


def test_dev_split_is_deterministic_disjoint_and_stratified() -> None:
    dataset = labelled_dataset()
    train, dev = dev_split(dataset, 0.1, seed=3)
    train_again, dev_again = dev_split(dataset, 0.1, seed=3)
    _, dev_other = dev_split(dataset, 0.1, seed=4)

    assert torch.equal(dev.images, dev_again.images)
    assert torch.equal(train.images, train_again.images)
    assert not torch.equal(dev.images, dev_other.images)
    train_ids = set(train.images.flatten().tolist())
    dev_ids = set(dev.images.flatten().tolist())
    assert not train_ids & dev_ids and len(train_ids | dev_ids) == len(dataset)
    assert torch.bincount(dev.labels).tolist() == [5, 5, 5, 5]
    assert dev.name == "toy/train/dev-part" and train.num_classes == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_dev_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(InputError, match="fraction"):
        dev_split(labelled_dataset(), fraction, seed=0)


def test_array_dataset_validates_and_works_with_dataloader() -> None:
    dataset = labelled_dataset(8)
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert images.shape == (8, 1, 1, 1) and labels.dtype == torch.int64
    with pytest.raises(InputError, match="float32"):
        ArrayDataset(dataset.images.double(), dataset.labels, 4, "bad", ("a", "b", "c", "d"))
    with pytest.raises(InputError, match=r"labels outside \[0, 2\)"):
        ArrayDataset(dataset.images, dataset.labels, 2, "bad", ("a", "b"))
    with pytest.raises(InputError, match=r"values outside \[0, 1\]"):
        ArrayDataset(dataset.images * 255, dataset.labels, 4, "bad", ("a", "b", "c", "d"))
