"""The training loop: Adam with per-step cosine decay, an objective, Jacobian regularisation,
pretraining, checkpoints, resume, best-checkpoint selection and a clear stop on divergence.

Position and randomness. The run is at (epoch, batch, step); epoch e's data order is seeded by
(seed, e) (see :mod:`deqshield.training.distributed`) and batches are read straight from the
in-memory data set (a ``DataLoader`` would draw its base seed from the global generator).
Checkpoints hold the model, Adam, the scheduler, the epoch's running sums, torch's, NumPy's and
Python's global RNG and the trainer's generators (``depth``: random intermediate index;
``attack``: PGD random starts), plus the position: a resumed run skips the consumed batches of
the current epoch and, on the CPU, ends with the same weights bit for bit as an uninterrupted
run. Evaluation (dev clean and PGD accuracy) uses its own fixed generator, so it never changes
the training randomness. Before a checkpoint is written the weights are checked to be finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from deqshield.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from deqshield.data import ArrayDataset
from deqshield.errors import DEQShieldError
from deqshield.gradients import Backprop
from deqshield.training.distributed import Context, epoch_indices
from deqshield.training.accuracy import accuracy, certified_accuracy, robust_accuracy
from deqshield.training.metrics import MetricsLog
from deqshield.training.forward import StepRandomness
from deqshield.training.objectives import Certified
from deqshield.training.step import TrainStep

if TYPE_CHECKING:
    from deqshield.io.config import TrainConfig


class TrainingDivergedError(DEQShieldError, RuntimeError):
    """The loss became NaN/infinite or the fixed-point residual exceeded its threshold."""


@dataclass
class EpochRecord:
    """Metrics of one epoch (means over the training examples; dev metrics after the epoch).
    ``train_robust``: every step of the epoch scored adversarial inputs (no pretraining or
    clean warm-up step), so ``train_accuracy`` is an accuracy on adversaries;
    ``adversarial_accuracy``: the accuracy on the steps that did (None if none did)."""

    epoch: int
    step: int
    loss: float
    train_accuracy: float
    train_robust: bool
    eval_accuracy: Optional[float]
    robust_accuracy: Optional[float]
    residual: Optional[float]
    is_best: bool
    certified_accuracy: Optional[float] = None
    restored_best: bool = False
    adversarial_accuracy: Optional[float] = None

    def learned_around_its_attack(self, margin: float = 0.1) -> bool:
        """The epoch's adversaries were classified better than clean dev images by more than
        ``margin``: the training attack has been learned around (label leaking, Kurakin et al.
        2017, or gradient masking), since an honest adversary is never easier than clean data."""
        return (self.adversarial_accuracy is not None and self.eval_accuracy is not None
                and self.adversarial_accuracy > self.eval_accuracy + margin)


@dataclass
class TrainHistory:
    epochs: list[EpochRecord] = field(default_factory=list)


@dataclass
class Position:
    """Where the run is: ``batch`` batches of epoch ``epoch`` (0-based) done, ``step`` in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


class Trainer:
    """Trains ``model`` on ``train_data`` with ``settings`` (a :class:`TrainConfig`).

    ``run_dir``: where checkpoints go (None: no checkpoints); ``metrics_path``: the JSON-lines
    metrics file (None: none). ``config``: the whole experiment config stored in checkpoints.
    ``on_step(step)`` is called after every optimizer step (for tests that interrupt a run).
    """

    def __init__(self, model: nn.Module, train_data: ArrayDataset,
                 dev_data: Optional[ArrayDataset], settings: TrainConfig, context: Context,
                 run_dir: Optional[Path] = None, metrics_path: Optional[Path] = None,
                 config: Optional[dict[str, Any]] = None, progress: bool = True,
                 on_step: Optional[Callable[[int], None]] = None):
        self.model = model.to(context.device)
        self.train_data, self.dev_data = train_data, dev_data
        self.settings, self.context = settings, context
        self.run_dir, self.config = run_dir, config or {}
        self.progress, self.on_step = progress, on_step
        step = TrainStep(self.model, settings.objective, settings.jacobian_weight)
        self.step_module: nn.Module = (DistributedDataParallel(step) if context.distributed
                                       else step)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr,
                                          weight_decay=settings.weight_decay)
        shard = len(epoch_indices(train_data, context, settings.seed, 0))
        self.batches_per_epoch = math.ceil(shard / settings.batch_size)
        self.replays: int = getattr(settings.objective, "replays", 1)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, settings.epochs * self.batches_per_epoch * self.replays)
        self.generators = {"depth": torch.Generator().manual_seed(settings.seed),
                           "attack": torch.Generator().manual_seed(settings.seed + 1)}
        self.carry: dict[str, torch.Tensor] = {}
        self.position = Position()
        # this epoch: loss * n, correct, n, residual sum, n scored on adversarial inputs, correct
        # among those
        self.sums = torch.zeros(6, dtype=torch.float64)
        self.best: Optional[float] = None
        self.best_weights: Optional[dict[str, torch.Tensor]] = None
        self.log = MetricsLog(metrics_path if context.is_main else None)

    def resume(self) -> bool:
        """Continue from the latest checkpoint of ``run_dir``; False if there is none."""
        if self.run_dir is None or latest_checkpoint(self.run_dir) is None:
            return False
        info = load_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, extra_generators=self.generators)
        self.position = Position(info.epoch, info.metrics["batch"], info.step)
        self.best = info.metrics["best_score"]
        self.sums[: len(info.metrics["epoch_sums"])] = torch.tensor(info.metrics["epoch_sums"],
                                                                   dtype=torch.float64)
        return True

    def run(self) -> TrainHistory:
        """Train until ``settings.epochs`` epochs are done; returns this call's epochs."""
        history = TrainHistory()
        try:
            while self.position.epoch < self.settings.epochs:
                history.epochs.append(self._epoch())
        finally:
            self.log.close()
        self.model.eval()
        return history

    def _epoch(self) -> EpochRecord:
        settings, pos = self.settings, self.position
        indices = epoch_indices(self.train_data, self.context, settings.seed, pos.epoch)
        size = settings.batch_size
        batches = [torch.tensor(indices[start:start + size])
                   for start in range(pos.batch * size, len(indices), size)]
        bar = tqdm(batches, desc=f"epoch {pos.epoch + 1}/{settings.epochs}",
                   disable=not (self.progress and self.context.is_main), leave=False,
                   initial=pos.batch, total=self.batches_per_epoch, mininterval=0.5)
        if pos.batch == 0:
            self.sums.zero_()
        sums = self.sums
        robust = False
        for batch in bar:
            x = self.train_data.images[batch].to(self.context.device)
            y = self.train_data.labels[batch].to(self.context.device)
            for replay in range(self.replays):
                robust = self._step(x, y, last=replay == self.replays - 1)
            bar.set_postfix({"loss": f"{sums[0] / sums[2]:.3f}",
                             "rob acc" if robust else "acc": f"{sums[1] / sums[2]:.3f}",
                             "res": f"{sums[3] / sums[2]:.1e}"})
        pos.epoch, pos.batch = pos.epoch + 1, 0
        return self._finish_epoch(sums)

    def _step(self, x: torch.Tensor, y: torch.Tensor, last: bool = True) -> bool:
        """One optimizer step, its batch statistics (all processes) added to ``self.sums``;
        returns whether the objective scored adversarial inputs. ``last``: the batch's last
        replay (free AT replays a batch; the position and checkpoints advance per batch)."""
        settings, pos = self.settings, self.position
        self.model.train()
        jacobian = (pos.step % settings.jacobian_every == 0
                    and (settings.jacobian_stop_epoch is None
                         or pos.epoch + 1 < settings.jacobian_stop_epoch))
        pretrain = (Backprop(steps=settings.pretrain_depth)
                    if pos.step < settings.pretrain_steps else None)
        randomness = StepRandomness(self.generators["depth"], self.generators["attack"],
                                    pos.step, self.carry)
        loss, output = self.step_module(x, y, randomness, jacobian, pretrain)
        residual = (output.trajectory.rel_residual[-1].nan_to_num(0.0).sum().item()
                    if output.trajectory is not None else 0.0)
        correct = (output.logits.argmax(1) == y).sum().item()
        local = torch.tensor([output.loss.item() * len(y), correct, len(y), residual,
                              len(y) if output.robust else 0.0,
                              correct if output.robust else 0.0,
                              0.0 if math.isfinite(loss.item()) else 1.0], dtype=torch.float64)
        total = self.context.sum(local)
        self._check_divergence(total, loss.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if output.after_backward is not None:
            output.after_backward()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        pos.step += 1
        pos.batch += int(last)
        self.sums += total[:6]
        if self.on_step is not None:
            self.on_step(pos.step)
        # the epoch's last step is checkpointed by _finish_epoch (once, with its metrics)
        if (last and settings.checkpoint_every
                and (pos.step // self.replays) % settings.checkpoint_every == 0
                and pos.batch < self.batches_per_epoch):
            self._save({}, is_best=False)
        return output.robust

    def _check_divergence(self, total: torch.Tensor, loss: float) -> None:
        threshold = self.settings.divergence_residual
        mean_residual = float(total[3] / total[2])
        if total[6] == 0 and (threshold is None or mean_residual <= threshold):
            return
        self._diverged(f"the loss became {loss}" if total[6] > 0 else
                       f"the mean relative residual {mean_residual:.3g} exceeded {threshold}")

    def _diverged(self, cause: str) -> None:
        last = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        raise TrainingDivergedError(
            f"training diverged at epoch {self.position.epoch + 1}, step {self.position.step}: "
            f"{cause}; the last good checkpoint is {last or 'none (no checkpoint yet)'}. "
            "Lower the learning rate, add Jacobian regularisation or use more solver steps")

    def _finish_epoch(self, sums: torch.Tensor) -> EpochRecord:
        """Evaluate on the dev split (main process), log, checkpoint."""
        clean = rob = cert = None
        is_best = False
        selection = self.settings.selection
        if self.context.is_main and self.dev_data is not None:
            clean = accuracy(self.model, self.dev_data, selection.batch_size, self.context.device)
            if selection.metric == "robust":
                rob = robust_accuracy(self.model, self.dev_data, selection.attack,
                                      selection.batch_size, self.context.device)
            if selection.metric == "certified":
                objective = self.settings.objective
                assert isinstance(objective, Certified)  # checked by TrainConfig
                cert = certified_accuracy(self.model, self.dev_data, objective.certified_eps,
                                          objective.weights.clip, selection.batch_size,
                                          self.context.device)
            score = {"robust": rob, "clean": clean, "certified": cert}[selection.metric]
            is_best = self.best is None or score > self.best
            self.best = score if is_best else self.best
        collapsed = self._collapsed(rob, is_best)
        record = EpochRecord(
            epoch=self.position.epoch, step=self.position.step, loss=float(sums[0] / sums[2]),
            train_accuracy=float(sums[1] / sums[2]), train_robust=bool(sums[4] == sums[2]),
            eval_accuracy=clean,
            robust_accuracy=rob,
            residual=float(sums[3] / sums[2]) if sums[3] > 0 else None, is_best=is_best,
            certified_accuracy=cert, restored_best=collapsed,
            adversarial_accuracy=float(sums[5] / sums[4]) if sums[4] > 0 else None)
        if collapsed:
            self._restore_best(rob)
        if record.learned_around_its_attack() and self.context.is_main:
            tqdm.write(f"warning: the training adversaries were classified better "
                       f"({record.adversarial_accuracy:.3f}) than clean dev images "
                       f"({clean:.3f}): the model has learned around its training attack "
                       f"(label leaking or gradient masking); its robustness will not hold "
                       f"against other attacks")
        self.log.write(asdict(record), self.progress and self.context.is_main)
        self._save(asdict(record), is_best)
        return record

    def _collapsed(self, robust: Optional[float], is_best: bool) -> bool:
        """The overfit guard's verdict (the same in every process): the dev robust accuracy
        fell more than the guard's ``drop`` below the best. Keeps a copy of the best weights."""
        guard = self.settings.overfit_guard
        if guard is None:
            return False
        fell = (self.context.is_main and robust is not None and self.best is not None
                and self.best - robust > guard.drop)
        best, collapsed = self.context.sum(torch.tensor([float(is_best), float(fell)])) > 0
        if best:
            self.best_weights = {k: v.detach().clone()
                                 for k, v in self.model.state_dict().items()}
        return bool(collapsed)

    def _restore_best(self, robust: Optional[float]) -> None:
        """Catastrophic overfitting: back to the best weights (of this process's memory, or
        the run's best checkpoint after a resume), stop after this epoch."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        elif self.run_dir is not None:
            load_checkpoint(self.run_dir, model=self.model, which="best", restore_rng=False)
        self.position.epoch = self.settings.epochs
        if self.context.is_main:
            tqdm.write(f"overfit guard: dev robust accuracy fell to {robust:.3f} (best "
                       f"{self.best:.3f}); restored the best weights and stopped training")

    def _save(self, metrics: dict[str, Any], is_best: bool) -> None:
        """Checkpoint (main process only) with the position and the best score so far."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged("the weights became NaN or infinite")
        if self.run_dir is not None and self.context.is_main:
            save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, step=self.position.step,
                            epoch=self.position.epoch, config=self.config,
                            metrics={**metrics, "batch": self.position.batch,
                                     "epoch_sums": self.sums.tolist(),
                                     "best_score": self.best},
                            is_best=is_best, keep_last=self.settings.keep_last,
                            extra_generators=self.generators)
        self.context.barrier()
