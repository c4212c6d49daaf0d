"""``deqshield zoo add|update|list|show``: package a run as a zoo model, record a
re-evaluation of one (or an outside check of its evaluation, or the reference AutoAttack on its
test images), and read the zoo's cards (thin over :mod:`deqshield.zoo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from deqshield.cli.args import ZOO_ADD, check_options
from deqshield.cli.errors import add_debug_flag
from deqshield.errors import InputError
from deqshield.zoo import store
from deqshield.zoo.cards import OutsideCheck, ReferenceAutoAttack, card_json
from deqshield.zoo.render import decimals_for, percent


def _add(args: argparse.Namespace) -> int:
    from deqshield.zoo.package import add_run

    check_options(args, ZOO_ADD)
    card = add_run(args.run_dir, args.name, config_file=args.config_file,
                   evaluation=args.evaluation, certification=args.certification,
                   smoothing=args.smoothing,
                   wall_time=args.wall_time, machine=args.machine, notes=args.note,
                   evaluate_command=args.evaluate_command, data_dir=args.data_dir,
                   processes=args.processes, force=args.force)
    print(f"added {card.name} to {store.root()} (sha256 {card.sha256[:12]}...); {REGENERATE}")
    return 0


def _update(args: argparse.Namespace) -> int:
    from deqshield.zoo.package import (record_check, update_evaluation, update_smoothing,
                                       update_text)

    if args.evaluate_command and any(value is not None for value in (
            args.smoothing, args.outside_check, args.reference_autoattack)):
        raise InputError("--evaluate-command goes with --evaluation, or alone to replace the "
                         "card's")
    _check_described("--outside-check", args.outside_check,
                     ("--outside-samples", args.outside_samples is not None),
                     ("--outside-command", bool(args.outside_command)))
    _check_described("--reference-autoattack", args.reference_autoattack,
                     ("--reference-command", bool(args.reference_command)))
    if args.outside_check is not None:
        card = record_check(args.name, notes=args.note, outside_check=OutsideCheck(
            command=args.outside_command, samples=args.outside_samples,
            worst_case_accuracy=args.outside_check))
        print(f"recorded the outside check of {card.name}: {card.outside_broken} samples "
              f"broken, worst case {percent(card.checked_worst_case, 2)}% (the evaluation's "
              f"{percent(card.worst_case_accuracy, 2)}%); {REGENERATE}")
        return 0
    if args.reference_autoattack is not None:
        card = record_check(args.name, notes=args.note, reference_autoattack=ReferenceAutoAttack(
            command=args.reference_command, accuracy=args.reference_autoattack))
        print(f"recorded the reference AutoAttack of {card.name}: "
              f"{percent(args.reference_autoattack, 2)}% of {card.test_images} test images; "
              f"{REGENERATE}")
        return 0
    if args.evaluation is None and args.smoothing is None:
        card = update_text(args.name, args.note, args.evaluate_command)
        print(f"updated the notes ({len(card.notes)}) and evaluate command of {card.name}; "
              f"{REGENERATE}")
        return 0
    if args.smoothing is not None:
        card = update_smoothing(args.name, args.smoothing, notes=args.note)
        print(f"updated the smoothing record of {card.name}: certified "
              f"{percent(card.certified_accuracy)}% at radius {card.eps:g} on "
              f"{card.test_images} images; {REGENERATE}")
        return 0
    card = update_evaluation(args.name, args.evaluation, evaluate_command=args.evaluate_command,
                             notes=args.note)
    print(f"updated the evaluation figures of {card.name}: worst case "
          f"{percent(card.worst_case_accuracy)}% on {card.test_images} images; {REGENERATE}")
    return 0


def _check_described(option: str, value: Optional[float],
                     *companions: tuple[str, bool]) -> None:
    """``option`` VALUE needs every companion option and they go only with it."""
    given = [present for _, present in companions]
    if (value is None and any(given)) or (value is not None and not all(given)):
        names = " and ".join(name for name, _ in companions)
        raise InputError(f"{option} needs {names}, and they go only with it")


REGENERATE = ("regenerate docs/zoo.md with: python -m deqshield.zoo.render > docs/zoo.md, and the "
              "README's zoo tables with: python -m deqshield.zoo.render --readme")


def _list(args: argparse.Namespace) -> int:
    for name in store.names():
        card = store.card(name)
        places = decimals_for(card.test_images)
        robust = (f"certified {percent(card.certified_accuracy, places)}%"
                  if card.certified_accuracy is not None
                  else f"worst case {percent(card.checked_worst_case, places)}%")
        if card.reference_accuracy is not None:
            robust += f"  AutoAttack {percent(card.reference_accuracy, places)}%"
        print(f"{card.name}  {card.dataset}  eps {card.eps:g}  {card.kind}  "
              f"clean {percent(card.clean_accuracy, places)}%  {robust}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(card_json(store.card(args.name)), end="")
    return 0


RESULT_FOLDERS = {
    "evaluation": "results.json (deqshield evaluate)",
    "certification": "certify.json (deqshield certify)",
    "smoothing": "smoothing.json (deqshield smooth), for a smoothed model named "
                 "{dataset}-l2-{radius}-{base}smooth{100 sigma}",
}
"""The ``zoo add`` options naming a folder of results, and what each folder holds."""


def add_zoo_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``zoo`` command (``add``, ``update``, ``list``, ``show``) to ``subparsers``."""
    parser = subparsers.add_parser(
        "zoo", help="the model zoo: package a run (add), record a re-evaluation or a check "
                    "(update), list the models, show a card")
    commands = parser.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    add = commands.add_parser("add", help="package a finished run as a zoo model")
    add.add_argument("run_dir", metavar="RUN", help="run directory written by deqshield train")
    add.add_argument("--name", required=True,
                     help="model name {dataset}-{linf|l2}-{eps}-{kind}, e.g. mnist-linf-0.3-deq")
    add.add_argument("--config-file", required=True,
                     help="the shipped config the run was trained with (a file name in "
                          "src/deqshield/configs/), for the retrain command")
    for option, made_by in RESULT_FOLDERS.items():
        add.add_argument(f"--{option}", type=Path,
                         help=f"folder with the run's {made_by}")
    add.add_argument("--evaluate-command", default="",
                     help="the command that produced the evaluation or certification (free "
                          "text; required with them)")
    add.add_argument("--wall-time", type=float, help="training wall time in seconds")
    add.add_argument("--processes", type=int, default=1,
                     help="training processes (torchrun --nproc_per_node) the run used, for "
                          "the retrain command (1)")
    add.add_argument("--machine", default="", help="the machine it was trained on (free text)")
    add.add_argument("--note", action="append", default=[], help="a note for the card "
                     "(repeatable)")
    update = commands.add_parser(
        "update", help="replace a zoo model's evaluation figures (or a smoothed model's "
                       "smoothing record) by a re-evaluation of it, record an outside check or "
                       "the reference AutoAttack, or replace only its notes")
    update.add_argument("name", metavar="NAME")
    measured = update.add_mutually_exclusive_group()
    measured.add_argument("--evaluation", type=Path,
                          help="folder with results.json of deqshield evaluate zoo:NAME")
    measured.add_argument("--smoothing", type=Path,
                          help="folder with smoothing.json of deqshield smooth zoo:NAME, "
                               "for a smoothed model")
    measured.add_argument("--outside-check", type=float, metavar="WORST_CASE",
                          help="record an outside check of the evaluation: the best "
                               "defense's worst case (a fraction) once the samples an "
                               "independent attack broke are counted")
    measured.add_argument("--reference-autoattack", type=float, metavar="ACCURACY",
                          help="record the reference AutoAttack on every test image "
                               "(benchmarks/independent_attack.py --all-samples): the best "
                               "defense's accuracy under it (a fraction)")
    update.add_argument("--reference-command", default="",
                        help="the reference AutoAttack's command (with --reference-autoattack)")
    update.add_argument("--outside-samples", type=int,
                        help="the samples the outside check attacked (with --outside-check)")
    update.add_argument("--outside-command", default="",
                        help="the outside check's command(s) (with --outside-check)")
    update.add_argument("--evaluate-command", default="",
                        help="the command that produced it (default: keep the card's; alone: "
                             "replace only the command)")
    update.add_argument("--note", action="append", default=[],
                        help="the card's notes (repeatable; default: keep the card's; "
                             "alone: replace only the notes)")
    update.set_defaults(run=_update)
    add.add_argument("--data-dir", help="data directory (overrides the run's data root)")
    add.add_argument("--force", action="store_true", help="replace an existing zoo model")
    add.set_defaults(run=_add)
    listing = commands.add_parser("list", help="one line per zoo model")
    listing.set_defaults(run=_list)
    show = commands.add_parser("show", help="a zoo model's card as indented JSON")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=_show)
    for command in (add, update, listing, show):
        add_debug_flag(command)
    return parser
