"""How the command line fails: one line on stderr, ``deqshield: error: ...``, and an exit code.

* 2: a bad argument (checked before anything is loaded), a bad config, run or data set, or an
  I/O failure (read-only file system, full disk, a file where a folder is expected);
* 130: interrupted (Ctrl-C).

No traceback is shown unless ``--debug`` is given (before or after the command name), which
re-raises the error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, NoReturn

from pydantic import ValidationError

from deqshield.cli.args import new_folders_removed_on_failure
from deqshield.errors import DEQShieldError

USAGE_ERROR = 2
INTERRUPTED = 130


def fail(message: str) -> int:
    """Print ``message`` as the single error line and return the usage exit code."""
    print(f"deqshield: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


def one_line(message: str) -> str:
    """A (possibly multi-line) message joined into one line: a line ending in a colon is
    followed by a space, other lines by "; "."""
    text = ""
    for part in (part.strip() for part in str(message).splitlines()):
        if part:
            text += ("" if not text else " " if text.endswith(":") else "; ") + part
    return text


def describe(error: BaseException) -> str:
    """The one-line text of an error from deqshield, pydantic or the operating system."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) + ': ' if e['loc'] else ''}"
            f"{e['msg'].removeprefix('Value error, ')}"
            + (f", got {e['input']!r}" if isinstance(e.get("input"), (int, float, str)) else "")
            for e in error.errors())
    if isinstance(error, OSError) and not isinstance(error, DEQShieldError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return str(error)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        sys.exit(fail(message))


def add_debug_flag(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``--debug``: show the traceback of an error instead of one line."""
    parser.add_argument("--debug", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="show the full traceback of an error")


def run_command(command: Callable[[Any], int], args: argparse.Namespace) -> int:
    """Run a command; errors become one line and exit code 2, Ctrl-C exit code 130; output
    folders the failed command created and left empty are removed."""
    try:
        with new_folders_removed_on_failure():
            return command(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        print("deqshield: interrupted" + "".join(f"; {hint}" for hint in interrupt.args),
              file=sys.stderr)
        return INTERRUPTED
    except (DEQShieldError, ValidationError, OSError) as error:
        if args.debug:
            raise
        return fail(describe(error))


@contextmanager
def on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C inside the block ends the command (exit code 130) with ``hint()`` on its one
    error line: what was kept and how to continue."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        raise KeyboardInterrupt(hint()) from interrupt
