"""``deqshield evaluate CONFIG WEIGHTS``: the white-box protocol on trained weights.

The model is built from the config's ``model`` section and loaded with
:func:`deqshield.checkpoint.load_weights`; the data set is the config's ``data`` section, test
split. Writes ``results.json`` and ``report.md`` into ``--out``. The lead wires
:func:`add_evaluate_command` into ``deqshield.cli``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deqshield.attacks import PGD, AutoAttackBridge
from deqshield.checkpoint import load_weights
from deqshield.config import load_config
from deqshield.data import load_dataset
from deqshield.protocol import AttackSpec, Protocol, run_protocol
from deqshield.readouts import Early, Ensemble, Final


def _evaluate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    data = load_dataset(config.data.name, "test", config.data.root, config.data.download)
    model = config.model.build(data.input_shape, data.num_classes)
    load_weights(args.weights, model)
    protocol = Protocol(
        defenses=(Final(), Early(index=args.early_index), Ensemble()),
        attacks=(AttackSpec(attack=PGD(steps=10), label="PGD-10"),
                 AttackSpec(attack=AutoAttackBridge(), label="AutoAttack")),
        eps=args.eps, quick=args.quick, early_exit=args.early_exit, seed=args.seed)
    results = run_protocol(protocol, model, data, out_dir=Path(args.out),
                           meta={"config": str(args.config), "weights": str(args.weights)},
                           progress=not args.quiet)
    worst = results["aggregate"]["worst_case"]
    print(f"per-sample worst case: {100 * worst['robust_accuracy']:.2f}% ({worst['defense']}); "
          f"report in {args.out}")
    return 0


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command to a ``deqshield`` sub-command parser."""
    parser = subparsers.add_parser(
        "evaluate", help="white-box evaluation: defenses x attacks, results.json + report.md")
    parser.add_argument("config", help="experiment config (YAML) the model was trained with")
    parser.add_argument("weights", help="weights file written by save_weights")
    parser.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    parser.add_argument("--eps", type=float, default=8 / 255, help="l_inf radius (default 8/255)")
    parser.add_argument("--early-index", type=int, default=1,
                        help="state of the early-state defense (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="few samples, capped AutoAttack budget: a smoke test")
    parser.add_argument("--early-exit", action="store_true",
                        help="skip samples already broken (per-attack cells become unknown)")
    parser.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_evaluate)
    return parser
