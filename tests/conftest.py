"""Test-suite settings: one intra-op thread (the tests use tiny tensors, for which thread
start-up costs more than it saves on a 2-core machine)."""

import torch

torch.set_num_threads(1)
