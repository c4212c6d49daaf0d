"""Fast and free adversarial training update what they claim, on hand-computed tiny cases."""

from __future__ import annotations

import torch
from torch import nn

from deqshield.attacks import cross_entropy
from deqshield.io.config import parse_config
from deqshield.models import SmallCNNSettings
from deqshield.training import FastAT, FreeAT, StepRandomness
from deqshield.training.run import train


class Linear(nn.Module):
    """logits = W x (x flattened): the input gradient of CE is W^T (p - onehot(y))."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def input_gradient(model, x, y):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(cross_entropy(model(x), y).sum(), x)[0]


def test_fgsm_with_random_start_is_one_projected_sign_step():
    model, x, y = Linear(), torch.full((2, 4), 0.5), torch.tensor([0, 2])
    fgsm = FastAT(eps=0.1, step=1.25, noise=1.0, project=True)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    start = x + 0.1 * noise
    expected = (start + 0.125 * input_gradient(model, start, y).sign()).clamp(x - 0.1, x + 0.1)
    got = fgsm.adversary(model, x, y, 0.1, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)


def test_n_fgsm_keeps_its_noise_and_step_unprojected():
    model, x, y = Linear(), torch.full((2, 4), 0.5), torch.tensor([1, 1])
    nfgsm = FastAT(eps=0.1)  # noise 2 eps, step eps, no projection
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    start = x + 0.2 * noise
    expected = (start + 0.1 * input_gradient(model, start, y).sign()).clamp(0, 1)
    got = nfgsm.adversary(model, x, y, 0.1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected)
    assert (got - x).abs().max() > 0.1  # beyond the eps-ball, as N-FGSM intends


def test_free_at_updates_the_perturbation_from_the_training_backward():
    model, x, y = Linear(), torch.full((2, 4), 0.5), torch.tensor([0, 2])
    free = FreeAT(eps=0.1, step=1.0, replays=2)
    randomness = StepRandomness()
    output = free.loss(model, x, y, randomness)
    output.loss.backward()
    parameter_grad = model.weight.grad.clone()
    output.after_backward()
    delta = randomness.carry["free-at"]
    expected = (0.1 * input_gradient(model, x, y).sign()).clamp(-0.1, 0.1)
    torch.testing.assert_close(delta, expected)
    # the parameter gradient is the CE gradient at x + delta_0 = x (first replay)
    model.weight.grad = None
    nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(parameter_grad, model.weight.grad)
    second = free.loss(model, x, y, randomness)  # the replay starts from the carried delta
    torch.testing.assert_close(second.inputs, (x + delta).clamp(0, 1))


def test_free_at_replays_each_batch_in_a_training_run(tmp_path):
    config = {"data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
              "model": {"name": "small-cnn", "channels": [4]},
              "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3,
                        "objective": {"name": "free-at", "eps": 0.1, "replays": 3},
                        "selection": {"metric": "clean", "limit": 16}}}
    result = train(parse_config(config), tmp_path / "run", progress=False)
    assert result.history.epochs[-1].step == 2 * 3  # 2 batches, 3 replays each


def test_the_overfit_guard_restores_the_best_weights_and_stops(tmp_path, monkeypatch):
    """Provoked collapse: the dev robust accuracy reads 0.6 after epoch 1, 0.1 after epoch 2."""
    import deqshield.training.loop as loop
    from deqshield.io.checkpoint import best_checkpoint, load_checkpoint

    scores = iter([0.6, 0.1, 0.5, 0.5])
    monkeypatch.setattr(loop, "robust_accuracy", lambda *args, **kwargs: next(scores))
    config = {"data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
              "model": {"name": "small-cnn", "channels": [4]},
              "train": {"epochs": 4, "batch_size": 32, "lr": 1e-2,
                        "objective": {"name": "fast-at", "eps": 0.1},
                        "overfit_guard": {"drop": 0.3},
                        "selection": {"metric": "robust", "limit": 16}}}
    result = train(parse_config(config), tmp_path / "run", progress=False)
    epochs = result.history.epochs
    assert [record.restored_best for record in epochs] == [False, True]  # stopped after 2
    best = SmallCNNSettings(channels=(4,)).build((1, 8, 8), 10)
    load_checkpoint(best_checkpoint(tmp_path / "run"), model=best, restore_rng=False)
    assert epochs[0].is_best
    for name, value in best.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[name]), name


def test_adversaries_easier_than_clean_data_are_flagged():
    """The warm PGD-AT run that leaked the label: adversaries 95% correct, clean dev 49%."""
    from deqshield.training.loop import EpochRecord

    def record(adversarial: float | None, clean: float) -> EpochRecord:
        return EpochRecord(epoch=1, step=1, loss=0.1, train_accuracy=0.9, train_robust=False,
                           eval_accuracy=clean, robust_accuracy=0.0, residual=None,
                           is_best=True, adversarial_accuracy=adversarial)

    # the warm-up's first step is clean, so the epoch is not train_robust: still flagged
    assert record(0.95, 0.49).learned_around_its_attack()
    assert not record(0.79, 0.95).learned_around_its_attack()  # honest PGD-AT
    assert not record(None, 0.49).learned_around_its_attack()  # only clean steps


def test_training_warns_when_its_adversaries_are_easier_than_clean_data(tmp_path, monkeypatch,
                                                                       capsys):
    import deqshield.training.loop as loop

    monkeypatch.setattr(loop, "accuracy", lambda *args, **kwargs: -1.0)  # provoked
    config = {"data": {"name": "digits", "dev_fraction": 0.1, "limit_train": 64},
              "model": {"name": "small-cnn", "channels": [4]},
              "train": {"epochs": 1, "batch_size": 32, "lr": 1e-2,
                        "objective": {"name": "fast-at", "eps": 0.1},
                        "selection": {"metric": "clean", "limit": 16}}}
    train(parse_config(config), tmp_path / "run", progress=False)
    assert "learned around its training attack" in capsys.readouterr().out
