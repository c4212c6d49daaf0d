"""Checks of command-line arguments, run before anything is loaded.

Each command lists its numeric options with the rule they follow (:data:`EVALUATE`,
:data:`CERTIFY`, :data:`SMOOTH`, :data:`ZOO_ADD`, :data:`COMPARE`); :func:`check_options` applies
the rules from :mod:`deqshield.validation` and names the option in the error.
:func:`prepare_output_dir` makes sure an output folder can be written and holds nothing that
would be overwritten unasked.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable

from deqshield.errors import OutputError
from deqshield.io.records import PartialRecords
from deqshield.validation import SEED_LIMIT, check_eps, check_number

Rule = Callable[[str, Any], Any]

positive = partial(check_number, minimum=1, integer=True)
non_negative = partial(check_number, minimum=0, integer=True)
non_negative_number = partial(check_number, minimum=0)
seed = partial(check_number, minimum=0, below=SEED_LIMIT, integer=True)


def radius(name: str, value: float) -> float:
    """An l_inf radius on [0, 1] inputs: finite, >= 0 and < 1."""
    return check_eps(value, name=name)


EVALUATE: Mapping[str, Rule] = {
    "eps": radius, "limit": positive, "early_index": positive, "entropy_interval": positive,
    "entropy_steps": non_negative, "entropy_step": non_negative_number,
    "apgd_iterations": positive, "apgd_restarts": positive, "square_queries": positive,
    "pgd_steps": positive, "seed": seed, "restarts": positive, "warm_steps": positive,
    "screen_samples": positive, "keep": positive, "follow": positive,
}
CERTIFY: Mapping[str, Rule] = {
    "eps": radius, "limit": positive, "pgd_steps": positive, "pgd_restarts": positive,
    "batch_size": positive, "seed": seed,
}

SMOOTH: Mapping[str, Rule] = {
    "n": positive, "n0": positive, "batch": positive, "limit": positive, "warm_steps": positive,
    "checks": positive, "seed": seed,
}
ZOO_ADD: Mapping[str, Rule] = {"wall_time": non_negative_number, "processes": positive}
COMPARE: Mapping[str, Rule] = {"radius": non_negative_number}


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str = "") -> None:
    """The positional RUN (a run directory or ``zoo:NAME``) and ``--out`` (default: the run
    directory, or its ``default_out`` subfolder; required for a zoo model) of the commands that
    read a trained model."""
    parser.add_argument("run_dir", metavar="RUN",
                        help="run directory written by `deqshield train`, or zoo:NAME")
    where = f"RUN/{default_out}" if default_out else "the run directory"
    parser.add_argument("--out", type=Path,
                        help=f"output folder (default: {where}; required for zoo:NAME)")


def check_options(args: argparse.Namespace, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` to the options that were given (None means "not given")."""
    for dest, rule in rules.items():
        value = getattr(args, dest, None)
        if value is not None:
            rule(f"--{dest.replace('_', '-')}", value)


_created_folders: list[Path] = []  # by prepare_output_dir, in order of creation


@contextmanager
def new_folders_removed_on_failure() -> Iterator[None]:
    """The folders :func:`prepare_output_dir` creates inside the block are removed again
    (deepest first) when the block raises and they are still empty: a failed command leaves
    no empty output folder behind."""
    start = len(_created_folders)
    try:
        yield
    except BaseException:
        for folder in reversed(_created_folders[start:]):
            try:
                folder.rmdir()
            except OSError:  # it holds something (kept) or is gone
                pass
        raise
    finally:
        del _created_folders[start:]


def prepare_output_dir(path: Path, option: str, *, force: bool | None = None,
                       writes: Sequence[str] = (), ignore: Sequence[str] = ()) -> Path:
    """Create the output folder ``path`` and check that it can be written.

    With ``force`` not None, a folder that already holds files is refused unless ``force`` is
    true (nothing is overwritten without being asked); with ``writes`` (the file names the
    command writes, for commands whose default folder is the run directory) only a folder
    holding one of those files is refused; files named in ``ignore`` never count. Raises
    :class:`OutputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; choose a folder")
    names = sorted(entry.name for entry in path.iterdir()
                   if entry.name not in ignore) if path.is_dir() else []
    if writes:
        names = [name for name in names if name in writes]
    if force is False and names:
        held = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputError(f"{option} {path} already holds {held}; pass --force to "
                          "overwrite it, or choose another folder")
    try:
        missing = [folder for folder in (path, *path.parents) if not folder.exists()]
        path.mkdir(parents=True, exist_ok=True)
        _created_folders.extend(reversed(missing))
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputError(f"{option} {path} cannot be written: "
                          f"{error.strerror or error}") from None
    return path


def prepare_resumable_dir(path: Path, option: str, partial: PartialRecords, *, force: bool,
                          resume: bool, writes: Sequence[str] = ()) -> Path:
    """:func:`prepare_output_dir` for a resumable job: the partial records of an interrupted
    job in ``path`` are kept with ``resume``, deleted with ``force`` and refused otherwise
    (never silently overwritten or ignored)."""
    held = partial.files() if Path(path).is_dir() else []
    if held and force:
        partial.remove()
    elif held and not resume:
        raise OutputError(f"{option} {path} holds the partial records of an interrupted "
                          f"{partial.job}; pass --resume to continue it or --force to start "
                          "over")
    return prepare_output_dir(path, option, force=force, writes=writes,
                              ignore=[file.name for file in held])

