"""Test-suite settings: one intra-op thread (the tests use tiny tensors, for which thread
start-up costs more than it saves on a 2-core machine)."""

import torch

torch.set_num_threads(1)


def tiny_conv_deq(*, samples: int, solver=None, seed: int = 0, channels: int = 4,
                  mistakes_every: int = 0):
    """A conv DEQ on 8x8 inputs in eval mode, ``samples`` random inputs and labels that are its
    own predictions (every ``mistakes_every``-th changed, to have clean mistakes)."""
    from torch.utils.data import TensorDataset

    from deqshield.models import ConvDEQSettings
    from deqshield.readouts import Final
    from deqshield.solvers import Anderson

    torch.manual_seed(seed)
    solver = solver or Anderson(max_iter=4, tol=1e-3)  # small: keeps the suite fast
    model = ConvDEQSettings(channels=channels, solver=solver).build((1, 8, 8), 10).eval()
    x = torch.rand(samples, 1, 8, 8)
    y = Final().logits(model, x).argmax(1)
    if mistakes_every:
        y[::mistakes_every] = (y[::mistakes_every] + 1) % 10
    return model, TensorDataset(x, y)


def digits_deq_config(*, limit_train: int, downsample: int, solver: str) -> dict:
    """A seconds-long digits DEQ experiment (one epoch, clean selection)."""
    return {"data": {"name": "digits", "dev_fraction": 0.1, "limit_train": limit_train},
            "model": {"name": "conv-deq", "channels": 4, "downsample": downsample, "pool": 2,
                      "solver": {"name": solver, "max_iter": 4, "tol": 1e-4}},
            "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3,
                      "selection": {"metric": "clean", "limit": 16}}}


class CountedCalls:
    """Replaces ``owner.name`` (via ``monkeypatch``) by a wrapper that counts finished calls
    in ``calls`` and raises KeyboardInterrupt (a Ctrl-C) instead of call ``stop_after`` + 1
    while ``stop_after`` is not None."""

    def __init__(self, monkeypatch, owner, name: str, stop_after: int | None = None):
        self.real = getattr(owner, name)
        self.calls = 0
        self.stop_after = stop_after
        monkeypatch.setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.real(*args, **kwargs)
