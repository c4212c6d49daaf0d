"""``deqshield certify RUN``: a thin wrapper over :func:`deqshield.certify.run.certify_run`
(under ``torchrun`` each process certifies its share of the samples; rank 0 writes)."""

from __future__ import annotations

import argparse
from typing import Any

from deqshield.certify.run import WRITES, certify_run
from deqshield.cli.args import CERTIFY, add_run_arguments, check_options, prepare_output_dir
from deqshield.io.runs import output_dir, run_config
from deqshield.sharding import sample_shards


def _certify(args: argparse.Namespace) -> int:
    check_options(args, CERTIFY)
    run_config(args.run_dir)
    out = output_dir(args.run_dir, args.out)
    with sample_shards(lambda: prepare_output_dir(out, "--out", force=args.force,
                                                  writes=WRITES)) as shard:
        results = certify_run(args.run_dir, out=out, limit=args.limit, eps=args.eps,
                              pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                              batch_size=args.batch_size, data_dir=args.data_dir,
                              seed=args.seed, progress=not args.quiet)
    if not shard.is_main:
        return 0
    accuracy = results["accuracy"]
    print(f"clean {100 * accuracy['clean']:.2f}%  PGD {100 * accuracy['pgd']:.2f}%  "
          f"certified {100 * accuracy['certified']:.2f}% at eps {results['eps']:g}; report in "
          f"{out}")
    return 0


def add_certify_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``certify`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "certify", help="certified / clean / PGD accuracy of a certified-training run "
                        "(certify.json, certify.md, bound_growth.png)")
    add_run_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="overwrite certify.json / certify.md / bound_growth.png already "
                             "in the folder")
    parser.add_argument("--limit", type=int, help="first N test examples (default: all)")
    parser.add_argument("--eps", type=float, help="l_inf radius (default: the run's eps)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default 20)")
    parser.add_argument("--pgd-restarts", type=int, default=3,
                        help="PGD random restarts (default 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--data-dir", help="data directory (overrides data.root)")
    parser.add_argument("--seed", type=int, default=0, help="PGD random-start seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_certify)
    return parser
