"""``deqshield smooth RUN``: a thin wrapper over :func:`deqshield.smoothing.run.smooth_run`
(resumable with ``--resume``; under ``torchrun`` each process certifies its share of the
images)."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from deqshield.cli.args import SMOOTH, add_run_arguments, check_options, prepare_resumable_dir
from deqshield.cli.errors import describe, on_interrupt
from deqshield.convergence import get_convergence_policy
from deqshield.errors import InputError
from deqshield.io.runs import output_dir, run_config
from deqshield.readouts import Early, Ensemble, Final
from deqshield.sharding import sample_shards
from deqshield.smoothing.records import smoothing_records
from deqshield.smoothing.report import WRITES
from deqshield.smoothing.sampling import Serialized, Smoothing


def parse_readout(text: str) -> Final | Early | Ensemble:
    """``final``, ``early:I`` or ``ensemble`` as a readout settings object."""
    if text == "final":
        return Final()
    if text == "ensemble":
        return Ensemble()
    name, _, index = text.partition(":")
    if name == "early" and index.isascii() and index.isdigit():
        return Early(index=int(index))
    raise InputError(f"--readout must be final, early:I or ensemble, got {text!r}")


def smoothing_settings(args: argparse.Namespace) -> Smoothing:
    """The validated :class:`Smoothing` settings of ``deqshield smooth``'s options."""
    check_options(args, SMOOTH)
    given = {name: value for name, value in (("steps", args.warm_steps),
                                             ("checks", args.checks),
                                             ("chained", args.chained or None))
             if value is not None}
    if given and not args.serialized:
        raise InputError("--warm-steps, --checks and --chained apply to --serialized "
                         "smoothing only")
    try:
        return Smoothing(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                         batch=args.batch, readout=parse_readout(args.readout),
                         serialized=Serialized(**given) if args.serialized else None)
    except ValidationError as error:
        raise InputError(f"invalid smoothing settings: {describe(error)}") from None


def _smooth(args: argparse.Namespace) -> int:
    from deqshield.smoothing.run import smooth_run

    settings = smoothing_settings(args)
    run_config(args.run_dir)
    out = output_dir(args.run_dir, args.out)
    with sample_shards(lambda: prepare_resumable_dir(
            out, "--out", smoothing_records(out), force=args.force, resume=args.resume,
            writes=WRITES)) as shard:
        with on_interrupt(lambda: f"the certified images are kept in {out}; continue with "
                                  "the same command and --resume"):
            results = smooth_run(args.run_dir, settings, out=out, limit=args.limit,
                                 seed=args.seed, data_dir=args.data_dir,
                                 progress=not args.quiet, resume=args.resume)
    if not shard.is_main:
        return 0
    accuracy = results["certified_accuracy"]
    cells = results["mean_cell_evaluations"]
    print("certified accuracy " + "  ".join(f"r={r}: {100 * a:.1f}%"
                                            for r, a in accuracy.items())
          + (f"; {cells:.0f} cell evaluations per image" if cells is not None else "")
          + f"; report in {out}")
    if results["unconverged_draws"]:
        factor = get_convergence_policy().factor
        print(f"note: {results['unconverged_draws']} noise draws stopped above {factor:g} x the "
              "solver's tolerance; the certificate is for the model's budgeted solve as it is")
    return 0


def add_smooth_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``smooth`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "smooth", help="randomized-smoothing l2 certificates of a run's model "
                       "(smoothing.json, smoothing.png)")
    add_run_arguments(parser)
    parser.add_argument("--sigma", type=float, required=True, help="noise level sigma")
    parser.add_argument("--n", "--draws", dest="n", type=int, default=10_000,
                        help="estimation draws (10000); spell it --draws under torchrun, "
                             "whose own options make --n ambiguous")
    parser.add_argument("--n0", type=int, default=100, help="selection draws (100)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument("--batch", type=int, default=1000, help="draws per forward pass")
    parser.add_argument("--limit", type=int, help="first N test examples (default: all)")
    parser.add_argument("--serialized", action="store_true",
                        help="warm-started noise chain (SRS) with the corrected certificate")
    parser.add_argument("--warm-steps", type=int,
                        help="solver updates per warm-started batch (3)")
    parser.add_argument("--checks", type=int,
                        help="draws also solved cold to bound the chain's error (200)")
    parser.add_argument("--chained", action="store_true",
                        help="warm-start each batch from the previous one (SRS's chain) "
                             "instead of from the cold-solved selection draws")
    parser.add_argument("--readout", default="final", help="final, early:I or ensemble")
    parser.add_argument("--force", action="store_true",
                        help="overwrite smoothing.json / smoothing.png already in the folder")
    parser.add_argument("--data-dir", help="data directory (overrides data.root)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted certification in the same folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_smooth)
    return parser
