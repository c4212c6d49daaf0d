"""Training objectives, the loop, divergence handling and the shipped configs (tiny sizes)."""

from __future__ import annotations

import importlib.resources
import json
import typing

import pytest
import torch

from deqshield.attacks.pgd import PGD
from deqshield.io.config import ExperimentConfig, TrainConfig, load_config, parse_config
from deqshield.data import ArrayDataset
from deqshield.gradients import Backprop, Phantom
from deqshield.models import ConvDEQSettings, ModelSpec
from deqshield.solvers import Anderson
from deqshield.training import (PGDAT, TRADES, Standard, StepRandomness, Trainer,
                                TrainingDivergedError, fit)
from deqshield.training.distributed import Context
from deqshield.training.accuracy import accuracy, robust_accuracy
from deqshield.training.adversary import Warmup
from deqshield.training.forward import forward

ATTACK = PGD(eps=0.1, step_size=0.05, steps=2)
SELECTION = {"attack": ATTACK, "limit": 6}
CPU = Context(0, 1, torch.device("cpu"))


def synthetic(n: int = 16, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = (0.3 * torch.rand(n, 1, 8, 8, generator=generator)
              + 0.2 * labels.view(-1, 1, 1, 1).float()).clamp(0, 1)
    return ArrayDataset(images, labels, 3, "synthetic/train", ("a", "b", "c"))


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = ConvDEQSettings(channels=4, downsample=1, pool=2, solver=Anderson(max_iter=6, tol=1e-4),
                           gradient=Phantom(steps=2, damping=0.5))
    return spec.build((1, 8, 8), 3)


OBJECTIVES = [Standard(), PGDAT(attack=ATTACK), TRADES(beta=6.0, attack=ATTACK)]


@pytest.mark.parametrize("random_intermediate", [False, True])
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_one_epoch_of_each_mode(tmp_path, objective, random_intermediate):
    objective = type(objective)(**{**objective.__dict__,
                                   "random_intermediate": random_intermediate})
    settings = TrainConfig(epochs=1, batch_size=8, lr=3e-3, objective=objective,
                           jacobian_weight=0.1, jacobian_every=2, selection=SELECTION)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, synthetic(), synthetic(6, seed=1), settings, CPU, tmp_path,
                      tmp_path / "metrics.jsonl", progress=False)
    (record,) = trainer.run().epochs
    assert torch.isfinite(torch.tensor(record.loss))
    assert record.train_robust == (objective.name != "standard")
    assert record.robust_accuracy is not None and record.is_best
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["epoch"] == 1 and line["step"] == 2


@pytest.mark.parametrize("objective_type", [PGDAT, TRADES], ids=["pgd-at", "trades"])
def test_warmup_ramps_the_adversarial_radius(objective_type):
    """Before ``start`` the step is clean; at step start + length/2 the adversaries lie in the
    half-radius ball and leave the quarter-radius one; after the ramp they use the full eps."""
    attack = PGD(eps=0.2, step_size=0.1, steps=3)
    objective = objective_type(attack=attack, warmup=Warmup(start=2, length=4))
    assert [objective.warmup.factor(t) for t in (0, 2, 4, 6, 9)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    model, data = tiny_model(), synthetic()
    x, y = data.images, data.labels
    clean = objective.loss(model, x, y, StepRandomness(step=1))
    assert not clean.robust and torch.equal(clean.inputs, x)
    assert torch.allclose(clean.loss, Standard().loss(model, x, y).loss)
    radii = []
    for step in (4, 6):
        output = objective.loss(model, x, y, StepRandomness(step=step))
        assert output.robust
        radii.append(float((output.inputs - x).abs().max()))
    assert 0.05 < radii[0] <= 0.1 + 1e-6
    assert 0.1 < radii[1] <= 0.2 + 1e-6


def test_clean_weight_mixes_clean_and_adversarial_cross_entropy():
    model, data = tiny_model(), synthetic()
    x, y = data.images, data.labels
    adversarial = PGDAT(attack=ATTACK).loss(model, x, y, StepRandomness(
        attack=torch.Generator().manual_seed(1)))
    mixed = PGDAT(attack=ATTACK, clean_weight=0.25).loss(model, x, y, StepRandomness(
        attack=torch.Generator().manual_seed(1)))
    clean = Standard().loss(model, x, y)
    torch.testing.assert_close(mixed.loss, 0.25 * clean.loss + 0.75 * adversarial.loss)
    assert torch.equal(mixed.inputs, adversarial.inputs) and mixed.robust


def test_robust_accuracy_counts_only_samples_also_correct_on_the_clean_input():
    """A model right on every perturbed input and wrong on every clean one is not robust."""

    source = synthetic()
    data = ArrayDataset((source.images * 255).round() / 255, source.labels, 3, "quantised",
                        source.class_names)

    class WrongOnlyWhenClean(torch.nn.Module):
        """Right label for every input off the 1/255 grid (any random start), wrong on it."""

        def forward(self, x):
            on_grid = (x * 255).sub((x * 255).round()).abs().flatten(1).amax(1) < 1e-4
            logits = torch.nn.functional.one_hot(data.labels[: len(x)], 3).float()
            logits[on_grid] = logits[on_grid].roll(1, dims=1)
            return logits

    model = WrongOnlyWhenClean()
    assert accuracy(model, data) == 0.0
    assert robust_accuracy(model, data, PGD(eps=0.1, step_size=0.05, steps=0)) == 0.0


def test_an_epoch_with_a_clean_step_is_not_reported_as_robust(tmp_path):
    settings = TrainConfig(epochs=2, batch_size=8, lr=3e-3, objective=PGDAT(attack=ATTACK),
                           pretrain_steps=1, selection=SELECTION)
    trainer = Trainer(tiny_model(), synthetic(), synthetic(6, seed=1), settings, CPU, tmp_path,
                      tmp_path / "metrics.jsonl", progress=False)
    first, second = trainer.run().epochs  # steps 0 (clean pretraining), 1 | 2, 3
    assert not first.train_robust and second.train_robust
    # the accuracy on adversaries counts the adversarial steps only (8 images in epoch 1)
    assert first.adversarial_accuracy is not None
    assert first.adversarial_accuracy * 8 == pytest.approx(round(first.adversarial_accuracy * 8))
    assert second.adversarial_accuracy == pytest.approx(second.train_accuracy)


def test_random_depth_never_reaches_evaluation():
    """The random-depth loss draws from its generator; model outputs (eval) never do."""
    model = tiny_model()
    data = synthetic()
    model.eval()
    with torch.no_grad():
        reference = model(data.images)
        trajectory = model.trajectory(data.images, record_states=False)
        deterministic = model.head(trajectory.final)
    assert torch.equal(reference, deterministic)
    objective = PGDAT(attack=ATTACK, random_intermediate=True)
    depth = torch.Generator().manual_seed(3)
    losses = set()
    for _ in range(3):
        model.train()
        output = objective.loss(model, data.images, data.labels, StepRandomness(depth=depth))
        losses.add(float(output.loss.detach()))
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(data.images), reference)
            assert torch.equal(forward(model, data.images)[0], reference)
    assert len(losses) > 1, "the random intermediate state should vary between steps"


def test_random_intermediate_loss_reads_the_drawn_state():
    model = tiny_model()
    model.deq.gradient = Phantom(steps=1, damping=1.0)
    data = synthetic(6)
    generator = torch.Generator().manual_seed(5)
    i = int(torch.randint(1, 7, (1,), generator=torch.Generator().manual_seed(5)))
    output = Standard(random_intermediate=True).loss(model, data.images, data.labels,
                                                     StepRandomness(depth=generator))
    trajectory = output.trajectory
    assert trajectory.num_steps == 6, "test assumes the solver used all its steps"
    f = model.cell_map(data.images)
    states = model.trajectory(data.images).states  # the loss itself keeps only z_i
    expected = model.head(f(states[i]))
    torch.testing.assert_close(output.logits, expected)


def test_random_intermediate_loss_unrolls_a_backprop_gradient_to_the_drawn_depth():
    # Backprop with a fixed number of steps replaces the forward solve: the loss on z_i must
    # unroll i iterations, not the configured N (a fixed N silently trained on z_N).
    model = tiny_model()
    model.deq.gradient = Backprop(steps=6)
    data = synthetic(6)
    i = int(torch.randint(1, 7, (1,), generator=torch.Generator().manual_seed(0)))
    assert i < 6, "test assumes an intermediate depth"
    output = Standard(random_intermediate=True).loss(
        model, data.images, data.labels, StepRandomness(depth=torch.Generator().manual_seed(0)))
    f = model.cell_map(data.images)
    z = model.trajectory(data.images).initial
    for _ in range(i):
        z = f(z)
    torch.testing.assert_close(output.logits, model.head(z))
    assert not torch.allclose(output.logits, model(data.images))


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    settings = TrainConfig(epochs=2, batch_size=8, lr=1e-3, checkpoint_every=1,
                           selection={"metric": "clean"})
    model = tiny_model()
    steps = []

    def poison(step: int) -> None:
        steps.append(step)
        if step == 2:
            with torch.no_grad():
                model.head[-1].weight.fill_(float("nan"))

    trainer = Trainer(model, synthetic(), None, settings, CPU, tmp_path, progress=False,
                      on_step=poison)
    with pytest.raises(TrainingDivergedError, match="step-00000001") as error:
        trainer.run()
    assert "weights became NaN" in str(error.value) and steps == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.startswith("step")) == ["step-00000001"]


def test_residual_threshold_stops_training(tmp_path):
    settings = TrainConfig(epochs=1, batch_size=8, divergence_residual=1e-12,
                           selection={"metric": "clean"})
    trainer = Trainer(tiny_model(), synthetic(), None, settings, CPU, progress=False)
    with pytest.raises(TrainingDivergedError, match="residual"):
        trainer.run()


def test_fit_keeps_its_python_api(tmp_path):
    history = fit(tiny_model(), synthetic(), epochs=1, batch_size=12, lr=1e-3,
                  eval_data=synthetic(6, 1), metrics_path=tmp_path / "m.jsonl", progress=False)
    assert history.epochs[0].eval_accuracy is not None
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


def shipped_configs() -> list:
    folder = importlib.resources.files("deqshield") / "configs"
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=str)


def test_shipped_configs_validate():
    names = {p.name for p in shipped_configs()}
    assert {"cifar10-deq-large-pgdat.yaml", "cifar10-deq-xl-pgdat.yaml",
            "mnist-conv-deq-pgdat.yaml", "fashion-mnist-conv-deq-trades.yaml",
            "digits-conv-deq-pgdat.yaml", "mnist-small-cnn-pgdat.yaml"} <= names
    registered = {spec.__dataclass_fields__["name"].default
                  for spec in typing.get_args(typing.get_args(ModelSpec)[0])}
    for path in shipped_configs():
        if "name: mdeq" in path.read_text() and "mdeq" not in registered:
            continue
        config = load_config(str(path))
        assert isinstance(config, ExperimentConfig)
        assert parse_config(config.model_dump(mode="json")) == config
    mnist = load_config(str(next(p for p in shipped_configs()
                                 if p.name == "mnist-conv-deq-pgdat.yaml")))
    assert mnist.train.objective.attack.eps == pytest.approx(0.3)


def test_a_run_remembers_its_data_directory(tmp_path):
    import yaml

    from deqshield.io.config import parse_config
    from deqshield.training.run import train

    config = {"data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 32},
              "model": {"name": "small-cnn", "channels": [2]},
              "train": {"epochs": 1, "batch_size": 32, "selection": {"metric": "clean",
                                                                      "limit": 8}}}
    train(parse_config(config), tmp_path / "run", data_dir=str(tmp_path / "data"),
          progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["root"] == str((tmp_path / "data").resolve())


@pytest.mark.parametrize(("local_rank", "expected"), [(None, 0), ("1", 1)])
def test_plain_cuda_device_becomes_this_process_gpu(monkeypatch, local_rank, expected):
    """``--device cuda`` names no index; torch.cuda.set_device refuses such a device, so the
    setup gives it this process's index (LOCAL_RANK, 0 outside torchrun)."""
    from deqshield.training import distributed

    chosen = []
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(distributed, "check_device", torch.device)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    context = distributed.setup("cuda")
    assert chosen == [torch.device("cuda", expected)]
    assert context.device == torch.device("cuda", expected)
