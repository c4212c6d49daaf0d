"""The ``deqshield`` command line: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from deqshield import __version__
from deqshield.cli.certify import add_certify_command
from deqshield.cli.compare import add_compare_command
from deqshield.cli.errors import OneLineParser, add_debug_flag, run_command
from deqshield.cli.evaluate import add_evaluate_command
from deqshield.cli.smooth import add_smooth_command
from deqshield.cli.train import add_train_command
from deqshield.cli.zoo import add_zoo_command


def _demo(args: argparse.Namespace) -> int:
    from deqshield.demo.run import FULL, TINY, run_demo

    run_demo(Path(args.out), TINY if args.tiny else FULL, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deqshield",
        description="Adversarial robustness of deep equilibrium models: train, attack, "
                    "defend and certify DEQs.")
    parser.add_argument("--version", action="version", version=f"deqshield {__version__}")
    add_debug_flag(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run the offline demo on the scikit-learn digits")
    demo.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    demo.add_argument("--tiny", action="store_true", help="a seconds-long run (for tests)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(run=_demo)
    add_train_command(commands)
    add_evaluate_command(commands)
    add_certify_command(commands)
    add_smooth_command(commands)
    add_zoo_command(commands)
    add_compare_command(commands)
    for command in commands.choices.values():
        add_debug_flag(command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv``; returns the exit code (see :mod:`deqshield.cli.errors`)."""
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
