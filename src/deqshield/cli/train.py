"""``deqshield train CONFIG --out RUN_DIR [--resume] [--data-dir DIR] [--download]``.

A thin wrapper over :func:`deqshield.training.run.train`. Under ``torchrun`` every process
runs the same command and the processes train one model together (rank 0 writes).

Before anything is loaded or written, the device and the config are checked and the run
directory must be writable (:func:`~deqshield.training.run.train` then checks a resumed
config against the run). Ctrl-C stops with
one line naming the last checkpoint and the command that resumes from it (exit code 130).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deqshield.io.checkpoint import latest_checkpoint
from deqshield.cli.args import prepare_output_dir
from deqshield.cli.errors import on_interrupt
from deqshield.io.config import load_config
from deqshield.validation import check_device


def _train(args: argparse.Namespace) -> int:
    from deqshield.training.run import train

    if args.device is not None:
        check_device(args.device)
    config = load_config(args.config)
    prepare_output_dir(args.out, "--out")

    def hint() -> str:
        last = latest_checkpoint(args.out)
        saved = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
        return f"{saved}; continue with: deqshield train {args.config} --out {args.out} --resume"

    with on_interrupt(hint):
        result = train(config, args.out, resume=args.resume, data_dir=args.data_dir,
                       download=args.download, device=args.device, progress=not args.quiet,
                       digest_dir=args.weights_digest_dir)
    if not args.quiet and result.best_checkpoint is not None:
        print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML experiment config (checkpoints, resume)")
    parser.add_argument("config", type=Path, help="experiment config (YAML)")
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run directory's latest checkpoint")
    parser.add_argument("--data-dir", help="data directory (overrides data.root)")
    parser.add_argument("--download", action="store_true",
                        help="download missing data set files")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--weights-digest-dir", type=Path,
                        help="each process writes rank-<r>.sha256 of its final weights there "
                             "(checks that distributed replicas agree)")
    parser.set_defaults(run=_train)
    return parser
