"""``deqshield evaluate RUN``: the white-box evaluation of a trained run (thin over
:func:`deqshield.evaluate.run.evaluate_run`)."""

from __future__ import annotations

import argparse
import dataclasses

from deqshield.cli.args import EVALUATE, add_run_arguments, check_options, prepare_resumable_dir
from deqshield.cli.errors import on_interrupt
from deqshield.evaluate.journal import evaluation_records
from deqshield.evaluate.run import evaluate_run
from deqshield.evaluate.specs import Screening
from deqshield.evaluate.standard import BUDGETS, AttackBudget
from deqshield.io.runs import output_dir, run_config
from deqshield.readouts import EntropyReduction
from deqshield.sharding import current_shard, sample_shards
from deqshield.solvers import SOLVER_NAMES
from deqshield.validation import check_index


def _evaluate(args: argparse.Namespace) -> int:
    """Check every argument, then evaluate (under ``torchrun`` each process its shard of the
    samples, merged over gloo; rank 0 prepares the output folder and writes)."""
    check_options(args, EVALUATE)
    config = run_config(args.run_dir)
    out = output_dir(args.run_dir, args.out, "evaluation")
    if args.early_index is not None and hasattr(config.model, "solver"):
        check_index("--early-index", args.early_index, config.model.solver.max_iter)
    with sample_shards(lambda: prepare_resumable_dir(out, "--out", evaluation_records(out),
                                                     force=args.force, resume=args.resume)):
        with on_interrupt(lambda: f"the attacked batches are kept in {out}; continue with "
                                  "the same command and --resume"):
            return _evaluate_here(args)


def _budget(args: argparse.Namespace) -> AttackBudget:
    """The ``--budget`` preset with the options given explicitly on top."""
    given = {name: getattr(args, name) for name in ("apgd_iterations", "apgd_restarts",
                                                    "square_queries", "pgd_steps", "restarts",
                                                    "warm_steps")
             if getattr(args, name) is not None}
    return dataclasses.replace(BUDGETS[args.budget], **given)


def _evaluate_here(args: argparse.Namespace) -> int:
    entropy = (EntropyReduction(interval=args.entropy_interval, steps=args.entropy_steps,
                                step_size=args.entropy_step, eps=args.eps)
               if args.entropy else None)
    out = output_dir(args.run_dir, args.out, "evaluation")
    results = evaluate_run(args.run_dir, out, which=args.which, data_dir=args.data_dir,
                           solver=args.solver, eps=args.eps, early_index=args.early_index,
                           limit=args.limit, sweep=args.sweep, entropy=entropy,
                           autoattack=not args.no_autoattack, quick=args.quick,
                           early_exit=args.early_exit, seed=args.seed,
                           budget=_budget(args),
                           screening=(Screening(samples=args.screen_samples, keep=args.keep,
                                                follow=args.follow) if args.screen else None),
                           progress=not args.quiet, resume=args.resume)
    if not current_shard().is_main:
        return 0
    worst = results["aggregate"]["worst_case"]
    min_max = results["aggregate"]["min_max"]
    if min_max:
        print(f"min-max robust accuracy: {100 * min_max['robust_accuracy']:.2f}% "
              f"({min_max['defense']})")
    print(f"per-sample worst case: {100 * worst['robust_accuracy']:.2f}% ({worst['defense']})")
    print(f"report: {out / 'report.md'}")
    return 0


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command to a ``deqshield`` sub-command parser."""
    parser = subparsers.add_parser(
        "evaluate", help="white-box evaluation of a trained run: defenses x attacks, "
                         "diagnostics, results.json + report.md + plots")
    add_run_arguments(parser, "evaluation")
    parser.add_argument("--force", action="store_true",
                        help="write into an output folder that already holds files")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted evaluation in --out (its journal of "
                             "attacked batches is kept until the results are written)")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="checkpoint to evaluate (default: best)")
    parser.add_argument("--data-dir", help="data directory (overrides the run's data root)")
    parser.add_argument("--eps", type=float, required=True, help="l_inf radius")
    parser.add_argument("--limit", type=int, help="evaluate the first N test samples")
    parser.add_argument("--early-index", type=int,
                        help="early-state index (default: chosen on the dev split)")
    parser.add_argument("--solver", choices=SOLVER_NAMES,
                        help="test-time solver (keeps the settings both share; the figures "
                             "are the model's with it); broyden enables the "
                             "simultaneous-adjoint attacks")
    parser.add_argument("--sweep", action="store_true",
                        help="the full (i, K, lambda) sweep of unrolled intermediates")
    parser.add_argument("--entropy", action="store_true",
                        help="also evaluate the entropy-reduction defense, with adaptive "
                             "attacks through it")
    entropy = EntropyReduction()
    parser.add_argument("--entropy-interval", type=int, default=entropy.interval,
                        help=f"T_f (default {entropy.interval})")
    parser.add_argument("--entropy-steps", type=int, default=entropy.steps,
                        help=f"R (default {entropy.steps})")
    parser.add_argument("--entropy-step", type=float, default=entropy.step_size,
                        help=f"beta (default {entropy.step_size:.4g})")
    parser.add_argument("--no-autoattack", action="store_true",
                        help="skip the AutoAttack columns (APGD, Square)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="reference",
                        help="attack budget preset: reference (AutoAttack's: APGD 100 "
                             "iterations x 1 restart, Square 5000 queries) or cpu (APGD "
                             f"{BUDGETS['cpu'].apgd_iterations} x {BUDGETS['cpu'].apgd_restarts}"
                             f", Square {BUDGETS['cpu'].square_queries} queries, PGD and Square "
                             f"{BUDGETS['cpu'].restarts} restarts: fits a 2-core machine); the "
                             "options below override it")
    parser.add_argument("--apgd-iterations", type=int, help="APGD iterations")
    parser.add_argument("--apgd-restarts", type=int,
                        help="APGD restarts (AutoAttack's standard: 1; APGD-T's target classes "
                             "act as restarts)")
    parser.add_argument("--square-queries", type=int, help="Square queries")
    parser.add_argument("--pgd-steps", type=int,
                        help=f"steps of every PGD column, of size 2.5 eps / steps (default "
                             f"{AttackBudget().pgd_steps}, the papers' ready-made PGD-10)")
    parser.add_argument("--restarts", type=int,
                        help="random restarts of the PGD and Square columns; every attack "
                             "keeps the first misclassified example over iterates and restarts")
    parser.add_argument("--warm-steps", type=int,
                        help="PGD's final-state solves start from the previous iterate's state "
                             "and take this many solver steps (attack side only; default: every "
                             "solve from z_0)")
    parser.add_argument("--screen", action="store_true",
                        help="rank the attacks on a few samples first; run the strongest on all "
                             "(the others keep their screening verdicts)")
    parser.add_argument("--screen-samples", type=int, default=Screening().samples,
                        help=f"samples of the screening (default {Screening().samples})")
    parser.add_argument("--keep", type=int, default=Screening().keep,
                        help=f"PGD columns kept after screening (default {Screening().keep})")
    parser.add_argument("--follow", type=int, default=Screening().follow,
                        help="strongest paths fed to APGD after screening "
                             f"(default {Screening().follow})")
    parser.add_argument("--quick", action="store_true",
                        help="few samples, capped AutoAttack budget: a smoke test")
    parser.add_argument("--early-exit", action="store_true",
                        help="skip samples already broken (per-attack cells become unknown)")
    parser.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_evaluate)
    return parser
