"""``deqshield demo``: the main job, offline, on the scikit-learn digits.

Trains a small convolutional DEQ on the digits that ship with scikit-learn, then reports the
clean accuracy of the equilibrium and, for every solver state z_n, its accuracy, relative
residual and prediction entropy, and writes ``results.json`` to the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from deqshield.data import dev_split, load_dataset
from deqshield.diagnostics import state_statistics
from deqshield.gradients import Phantom
from deqshield.models import ConvDEQ
from deqshield.settings import settings_dict
from deqshield.solvers import Anderson
from deqshield.training import accuracy, fit


@dataclass(frozen=True)
class DemoSize:
    """How much work the demo does (the test suite runs a tiny one)."""

    epochs: int = 12
    channels: int = 16
    limit: int | None = None


FULL = DemoSize()
TINY = DemoSize(epochs=1, channels=4, limit=128)


def run_demo(out_dir: Path, size: DemoSize = FULL, *, progress: bool = True) -> dict:
    """Run the demo, write ``out_dir/results.json`` and return its content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.time()
    train_full = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    train, dev = dev_split(train_full, 0.1, seed=0)
    if size.limit is not None:
        train = train.subset(range(min(size.limit, len(train))), "digits-train-limited")
    spec = ConvDEQ(channels=size.channels, downsample=1, pool=4,
                   solver=Anderson(max_iter=12, tol=1e-3),
                   gradient=Phantom(steps=5, damping=0.5))
    model = spec.build(train.input_shape, train.num_classes)
    say = print if progress else (lambda *_: None)
    say(f"deqshield demo: training a convolutional DEQ ({sum(p.numel() for p in model.parameters())}"
        f" parameters) on {len(train)} scikit-learn digits")
    history = fit(model, train, epochs=size.epochs, batch_size=64, lr=3e-3, eval_data=dev,
                  metrics_path=out_dir / "metrics.jsonl", progress=progress)
    clean = accuracy(model, test)
    states = state_statistics(model, test)
    results = {
        "data": {"name": "digits", "train": len(train), "dev": len(dev), "test": len(test)},
        "model": settings_dict(spec),
        "clean_accuracy": clean,
        "states": states.as_dict(),
        "training": [record.__dict__ for record in history.epochs],
        "seconds": time.time() - started,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    say(f"\nclean test accuracy: {clean:.3f}   "
        f"(converged fraction {states.converged_fraction:.2f})")
    say(f"{'state':>6} {'accuracy':>9} {'rel. residual':>14} {'entropy':>8}")
    for n, (acc, res, ent) in enumerate(zip(states.accuracy, states.relative_residual,
                                            states.entropy)):
        say(f"{'z_' + str(n):>6} {acc:9.3f} {res:14.2e} {ent:8.3f}")
    say(f"\nwrote {out_dir / 'results.json'} in {results['seconds']:.0f} s")
    return results
