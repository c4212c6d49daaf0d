"""Fetching official data set files: download, md5 check, atomic write, archive extraction.

Nothing is ever left half-written: a file is streamed into a hidden temporary file in its
destination directory, checked against its published md5 and only then renamed into place
with :func:`os.replace`; an archive is extracted into a temporary directory that is renamed
into place once extraction has finished.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from deqshield.data.base import read_verified
from deqshield.errors import DataError, InputError

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0


def download_file(
    filename: str,
    directory: str | Path,
    md5: str,
    mirrors: Sequence[str],
    *,
    progress: bool = True,
) -> Path:
    """Make sure ``directory / filename`` exists and has md5 ``md5``, downloading it if absent.

    The mirrors (base URLs; ``filename`` is appended to each) are tried in order until one
    serves a file with the right checksum.

    Args:
        filename: name of the file, both on the mirrors and on disk.
        directory: destination directory, created if needed.
        md5: the published md5 of the file.
        mirrors: base URLs to try, e.g. ``["https://ossci-datasets.s3.amazonaws.com/mnist/"]``.
        progress: show a tqdm progress bar while downloading.

    Returns:
        The path of the verified file.

    Raises:
        DataError: an existing file has the wrong checksum, or no mirror served the file
            with the right checksum (the message lists every URL tried and why it failed).
        InputError: ``mirrors`` is empty.
    """
    if not mirrors:
        raise InputError(f"no mirror to download {filename} from")
    destination = Path(directory) / filename
    if destination.is_file():
        read_verified(destination, md5)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            _fetch_verified(url, destination, md5, progress)
            return destination
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append(f"{url}: {error}")
    raise DataError(f"could not download {filename}; " + "; ".join(failures))


def _fetch_verified(url: str, destination: Path, md5: str, progress: bool) -> None:
    """Stream ``url`` into ``destination``, replacing it only once its md5 is ``md5``."""
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    temporary = Path(temporary_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with (
            os.fdopen(handle, "wb") as sink,
            urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response,
        ):
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=destination.name,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch, expected md5 {md5} but got {digest.hexdigest()}")
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def extract_archive(archive: Path, member_root: str, destination: Path) -> Path:
    """Extract the folder ``member_root`` of a ``.zip``/``.tar.gz`` archive into ``destination``.

    Call this only on an archive whose checksum has been verified. The folder appears as
    ``destination / member_root`` only once extraction has completed; an existing folder of
    that name is left untouched and returned.

    Raises:
        DataError: the archive cannot be read or lacks ``member_root``.
    """
    target = destination / member_root
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{member_root}.", suffix=".part", dir=destination))
    try:
        _extract_all(archive, staging)
        if not (staging / member_root).is_dir():
            raise DataError(f"{archive}: the archive has no folder {member_root}/")
        os.replace(staging / member_root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract_all(archive: Path, directory: Path) -> None:
    """Extract every member of a ``.zip`` or ``.tar*`` archive into ``directory``."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(directory)
        else:
            with tarfile.open(archive, "r:*") as bundle:
                bundle.extractall(directory, filter="data")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise DataError(f"{archive}: cannot extract the archive ({error})") from error


def fetch_archive(archive: str, md5: str, mirrors: Sequence[str], member_root: str,
                  destination: Path) -> Path:
    """Download ``archive`` into ``destination`` (checking its md5) and extract its folder
    ``member_root`` there; returns the extracted folder."""
    return extract_archive(download_file(archive, destination, md5, mirrors), member_root,
                           destination)
