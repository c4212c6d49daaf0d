"""``deqshield compare A B``: a thin wrapper over :func:`deqshield.compare.compare`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from deqshield.cli.args import COMPARE, check_options
from deqshield.compare import SampleVerdicts, Selection, compare, read_model


def _side(report: Path, more: Optional[list[Path]], selection: Selection) -> SampleVerdicts:
    """One model's verdicts: ``report``, combined with its ``more`` reports by
    :func:`~deqshield.compare.read_model`."""
    return read_model([report, *(more or [])], selection)


def _compare(args: argparse.Namespace) -> int:
    check_options(args, COMPARE)
    comparison = compare(_side(args.a, args.also_a, Selection(args.defense_a, args.radius)),
                         _side(args.b, args.also_b, Selection(args.defense_b, args.radius)))
    print(comparison.summary())
    return 0


def add_compare_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "compare", help="paired test (McNemar) of two reports' per-sample verdicts on the same "
                        "test images: is the difference in robust / certified accuracy real?")
    parser.add_argument("a", type=Path, metavar="A",
                        help="results.json (deqshield evaluate), certify.json (deqshield "
                             "certify) or smoothing.json (deqshield smooth)")
    parser.add_argument("b", type=Path, metavar="B", help="the report to compare A with")
    for side in ("a", "b"):
        parser.add_argument(f"--also-{side}", type=Path, action="append", metavar="REPORT",
                            help=f"another report of {side.upper()}'s model on (some of) the same "
                                 "images (another evaluation, other random draws, an "
                                 "independent_attack.json of benchmarks/independent_attack.py; "
                                 "repeatable): a sample counts robust only if every report "
                                 "says so")
    parser.add_argument("--defense-a", help="defense of A, by its label in results.json "
                                            "(default: the best defense)")
    parser.add_argument("--defense-b", help="defense of B (default: the best defense)")
    parser.add_argument("--radius", type=float,
                        help="l2 radius at which smoothing reports count a sample certified")
    parser.set_defaults(run=_compare)
    return parser
