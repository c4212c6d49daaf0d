"""Checks of command-line arguments, run before anything is loaded.

Each command lists its numeric options with the rule they follow (:data:`EVALUATE`,
:data:`CERTIFY`, :data:`ZOO_ADD`); :func:`check_options` applies the rules from
:mod:`deqshield.validation` and names the option in the error. :func:`prepare_output_dir`
makes sure an output folder can be written and holds nothing that would be overwritten
unasked.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Callable

from deqshield.errors import OutputError
from deqshield.validation import check_eps, check_number

Rule = Callable[[str, Any], Any]

positive = partial(check_number, minimum=1, integer=True)
non_negative = partial(check_number, minimum=0, integer=True)
non_negative_number = partial(check_number, minimum=0)


def radius(name: str, value: float) -> float:
    """An l_inf radius on [0, 1] inputs: finite, >= 0 and < 1."""
    return check_eps(value, name=name)


EVALUATE: Mapping[str, Rule] = {
    "eps": radius, "limit": positive, "early_index": positive, "entropy_interval": positive,
    "entropy_steps": non_negative, "entropy_step": non_negative_number,
    "apgd_iterations": positive, "square_queries": positive, "seed": non_negative,
    "restarts": positive, "warm_steps": positive, "screen_samples": positive, "keep": positive, "follow": positive,
}
CERTIFY: Mapping[str, Rule] = {
    "eps": radius, "limit": positive, "pgd_steps": positive, "pgd_restarts": positive,
    "batch_size": positive, "seed": non_negative,
}

ZOO_ADD: Mapping[str, Rule] = {"wall_time": non_negative_number}


def check_options(args: argparse.Namespace, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` to the options that were given (None means "not given")."""
    for dest, rule in rules.items():
        value = getattr(args, dest, None)
        if value is not None:
            rule(f"--{dest.replace('_', '-')}", value)


def prepare_output_dir(path: Path, option: str, *, force: bool | None = None) -> Path:
    """Create the output folder ``path`` and check that it can be written.

    With ``force`` not None, a folder that already holds files is refused unless ``force`` is
    true (nothing is overwritten without being asked). Raises :class:`OutputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; choose a folder")
    if force is False and path.is_dir() and any(path.iterdir()):
        names = sorted(entry.name for entry in path.iterdir())
        held = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputError(f"{option} {path} is not empty (it holds {held}); pass --force to "
                          "overwrite it, or choose another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputError(f"{option} {path} cannot be written: "
                          f"{error.strerror or error}") from None
    return path

