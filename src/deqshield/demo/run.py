"""``deqshield demo``: the whole story offline, on the scikit-learn digits, in minutes on CPU.

1. Train two small convolutional DEQs with PGD-AT: plain, and with the loss on random
   intermediate states (regulating-dynamics-icml23 Sec. 3.3).
2. Evaluate each with the white-box protocol (closer-look-neurips22): the ready-made attack
   that makes a DEQ look robust, the intermediate-state attacks that reveal its robustness,
   the early / ensemble / entropy-reduction defenses, Square as a gradient-free control.
3. Train and certify a small CerDEQ (cerdeq-icml22) beside a CNN-7 of the same budget.
4. Attack the shipped MNIST DEQ of the model zoo (eps 0.3) on the MNIST test slice inside the
   package: the ready-made attack against the full unroll, an intermediate attack and Square.
5. Write ``results.json``, ``report.md``, ``report.html`` and PNG plots into the output folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from deqshield.certify.run import certify_run
from deqshield.certify import CerDEQSettings, cnn7_matching_budget
from deqshield.io.config import parse_config
from deqshield.data import dev_split, load_dataset
from deqshield.demo.report import final_row, ready_made_accuracy, write_demo_report
from deqshield.errors import InputError
from deqshield.evaluate.run import evaluate_model
from deqshield.evaluate.specs import AttackSpec
from deqshield.evaluate.standard import (READY_MADE_PATH, AttackBudget, autoattack_columns,
                                         full_unroll)
from deqshield.models import DEQClassifier
from deqshield.paths import (PathSpec, SimultaneousAdjoint, ThroughEntropyReduction,
                             UnrolledEnsemble, UnrolledIntermediate)
from deqshield.readouts import EntropyReduction
from deqshield.io.runs import load_run
from deqshield import zoo
from deqshield.settings import settings_dict
from deqshield.training.run import train

EPS = 0.1
"""l_inf radius on the digits (pixels in [0, 1], 8x8 images)."""


@dataclass(frozen=True)
class DemoSize:
    """How much work the demo does (the test suite runs ``TINY``)."""

    epochs: int = 8
    channels: int = 16
    train_limit: Optional[int] = None
    eval_limit: int = 200
    dev_limit: int = 200
    attack_steps: int = 5
    entropy_steps: int = 5
    certified_epochs: int = 15
    certified_channels: int = 8
    certified_width: int = 64
    certify_limit: Optional[int] = None
    zoo_limit: int = 64


FULL = DemoSize()
TINY = DemoSize(epochs=1, channels=4, train_limit=96, eval_limit=8, dev_limit=8,
                attack_steps=1, entropy_steps=1, certified_epochs=1, certified_channels=2,
                certified_width=8, certify_limit=16, zoo_limit=4)


def deq_config(size: DemoSize, random_intermediate: bool) -> dict[str, Any]:
    """The demo's DEQ experiment (a validated config mapping)."""
    attack = {"name": "pgd", "eps": EPS, "step_size": 2.5 * EPS / size.attack_steps,
              "steps": size.attack_steps}
    return {
        "data": {"name": "digits", "dev_fraction": 0.1, "seed": 0,
                 "limit_train": size.train_limit},
        "model": {"name": "conv-deq", "channels": size.channels, "downsample": 1, "pool": 4,
                  "solver": {"name": "broyden", "max_iter": 8, "tol": 1e-4},
                  "gradient": {"name": "phantom", "steps": 5, "damping": 0.5}},
        "train": {"epochs": size.epochs, "batch_size": 64, "lr": 3e-3,
                  "objective": {"name": "pgd-at", "attack": attack,
                                "random_intermediate": random_intermediate},
                  "jacobian_weight": 0.5, "jacobian_every": 2, "pretrain_steps": 40,
                  "pretrain_depth": 8,
                  "selection": {"metric": "robust", "limit": size.dev_limit,
                                "attack": {"name": "pgd", "eps": EPS, "step_size": EPS / 4,
                                           "steps": 10}}},
    }


MODELS = {"PGD-AT": False, "PGD-AT + random intermediates": True}
ZOO_MODEL = "mnist-linf-0.3-deqpgdat20"
"""The shipped MNIST DEQ the demo attacks (on the MNIST test slice inside the package)."""


def demo_paths(model: DEQClassifier, entropy: EntropyReduction) -> tuple[PathSpec, ...]:
    """The gradient paths of the demo's PGD columns: the ready-made attack, one of each kind of
    intermediate-state attack and the adaptive attack on the entropy defense."""
    return (READY_MADE_PATH, SimultaneousAdjoint(ensemble=True),
            UnrolledIntermediate(index=1, steps=1, damping=1.0),
            UnrolledIntermediate(index=1, steps=5, damping=0.5), full_unroll(model),
            UnrolledEnsemble(steps=1, damping=1.0), ThroughEntropyReduction(defense=entropy))


def zoo_paths(model: DEQClassifier) -> tuple[PathSpec, ...]:
    """The gradient paths of the PGD columns run on the zoo's model."""
    return (READY_MADE_PATH, UnrolledIntermediate(index=1, steps=5, damping=1.0),
            full_unroll(model), UnrolledEnsemble(steps=1, damping=1.0))


def columns(paths: Sequence[PathSpec]) -> Callable[[AttackSpec], bool]:
    """Which columns of the standard attack set the demo runs (``deqshield evaluate`` runs them
    all): the protocol's PGD along each of ``paths``, and the gradient-free Square control."""
    budget = AttackBudget()
    square = autoattack_columns([], budget)[-1]
    return lambda spec: spec == square or (spec.attack == budget.pgd and spec.path in paths)


def certified_models(size: DemoSize) -> dict[str, dict[str, Any]]:
    """A CerDEQ and the CNN-7 with the parameter budget closest to it (model sections)."""
    cerdeq = CerDEQSettings(input_shape=(1, 8, 8), conv_channels=(size.certified_channels,),
                            linear_width=size.certified_width)
    budget = sum(p.numel() for p in cerdeq.build((1, 8, 8), 10).parameters())
    cnn7 = cnn7_matching_budget(budget, (1, 8, 8), 10)
    return {"CerDEQ": settings_dict(cerdeq), "CNN-7 (same budget)": settings_dict(cnn7)}


def certified_config(size: DemoSize, model: dict[str, Any]) -> dict[str, Any]:
    """Certified training (Fast-IBP objective, eps warm-up) on the digits."""
    steps_per_epoch = -(-int(0.9 * (size.train_limit or 1438)) // 64)
    total = size.certified_epochs * steps_per_epoch
    return {
        "data": {"name": "digits", "dev_fraction": 0.1, "seed": 0,
                 "limit_train": size.train_limit},
        "model": model,
        "train": {"epochs": size.certified_epochs, "batch_size": 64, "lr": 1e-3,
                  "grad_clip": 10.0,
                  "objective": {"name": "certified",
                                "schedule": {"target": EPS, "start": total // 10,
                                             "length": max(total // 2, 1)}},
                  "selection": {"metric": "certified", "limit": size.dev_limit}},
    }


@contextmanager
def small_model_threads() -> Iterator[None]:
    """One intra-op thread while the demo runs, unless ``OMP_NUM_THREADS`` says otherwise: its
    models are so small that thread start-up and spin-waiting cost more than they save, and
    several times more on a machine with other load."""
    previous = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_demo(out_dir: Path, size: DemoSize = FULL, *, progress: bool = True) -> dict[str, Any]:
    """Run the demo and write its report; returns the content of ``results.json``. An output
    folder that already holds a demo is never overwritten."""
    with small_model_threads():
        return _run_demo(out_dir, size, progress)


def _run_demo(out_dir: Path, size: DemoSize, progress: bool) -> dict[str, Any]:
    if (out_dir / "runs").exists() or (out_dir / "results.json").exists():
        raise InputError(f"{out_dir} already holds a demo; choose another folder (--out) or "
                         "delete it")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.time()
    say = tqdm.write if progress else (lambda *_: None)
    certifiable = certified_models(size)
    stages = tqdm(total=2 * len(MODELS) + 2 * len(certifiable) + 1, desc="deqshield demo",
                  disable=not progress, position=0)
    train_full = load_dataset("digits", "train")
    _, dev = dev_split(train_full, 0.1, seed=0)
    entropy = EntropyReduction(interval=2, steps=size.entropy_steps, step_size=EPS / 4,
                               eps=EPS)
    models: dict[str, Any] = {}
    for name, random_intermediate in MODELS.items():
        slug = name.lower().replace(" + ", "-").replace(" ", "-")
        run_dir = out_dir / "runs" / slug
        stages.set_postfix_str(f"training {name}")
        config = parse_config(deq_config(size, random_intermediate))
        result = train(config, run_dir, progress=False)
        stages.update()
        run = load_run(run_dir)
        stages.set_postfix_str(f"evaluating {name}")
        evaluation = evaluate_model(run.model, run.test, dev, out_dir / slug, eps=EPS,
                                    limit=size.eval_limit, dev_limit=size.dev_limit,
                                    entropy=entropy, quick=True,
                                    keep=columns(demo_paths(run.model, entropy)),
                                    progress=False, meta={"model": name, "run": str(run_dir)})
        stages.update()
        models[name] = {"folder": slug, "training": [record.__dict__ for record in
                                                     result.history.epochs],
                        "evaluation": evaluation}
        say(_summary_line(name, evaluation))
    certified: dict[str, Any] = {}
    for name, section in certifiable.items():
        slug = name.split(" ")[0].lower()
        run_dir = out_dir / "runs" / slug
        stages.set_postfix_str(f"certified training of {name}")
        train(parse_config(certified_config(size, section)), run_dir, progress=False)
        stages.update()
        stages.set_postfix_str(f"certifying {name}")
        certified[name] = {"folder": slug, **certify_run(run_dir, out=out_dir / slug,
                                                         limit=size.certify_limit)}
        stages.update()
        accuracy = certified[name]["accuracy"]
        say(f"{name}: clean {100 * accuracy['clean']:.1f}%, PGD {100 * accuracy['pgd']:.1f}%, "
            f"certified {100 * accuracy['certified']:.1f}%, certified samples broken by PGD: "
            f"{certified[name]['certified_broken_by_pgd']}")
    stages.set_postfix_str(f"attacking the zoo's {ZOO_MODEL}")
    shipped = {f"zoo: {ZOO_MODEL} (MNIST, eps 0.3)": zoo_stage(size, out_dir)}
    stages.update()
    stages.close()
    results = {"eps": EPS, "data": "scikit-learn digits (8x8, 10 classes)",
               "models": models, "zoo": shipped, "certified": certified,
               "seconds": time.time() - started}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_demo_report(out_dir, results)
    say(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.html'} "
        f"in {results['seconds']:.0f} s")
    return results


def zoo_stage(size: DemoSize, out_dir: Path) -> dict[str, Any]:
    """The shipped MNIST DEQ under a quick white-box evaluation on the package's MNIST slice."""
    model, card = zoo.load(ZOO_MODEL)
    data = zoo.test_slice("mnist")
    data = data.subset(range(size.zoo_limit), f"{data.name}[:{size.zoo_limit}]")
    slug = ZOO_MODEL
    evaluation = evaluate_model(model, data, None, out_dir / slug, eps=card.eps,
                                early_index=model.deq.solver.max_iter // 2, quick=True,
                                keep=columns(zoo_paths(model)), progress=False,
                                meta={"model": ZOO_MODEL, "card": card.name})
    return {"folder": slug, "evaluation": evaluation}


def _summary_line(name: str, evaluation: dict[str, Any]) -> str:
    final = final_row(evaluation)
    worst = evaluation["aggregate"]["worst_case"]
    return (f"{name}: clean {100 * final['clean_accuracy']:.1f}%, ready-made PGD "
            f"{100 * ready_made_accuracy(evaluation):.1f}%, white-box worst case "
            f"{100 * worst['robust_accuracy']:.1f}% ({worst['defense']})")
