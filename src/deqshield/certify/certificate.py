"""Certificates of l_inf robustness for :class:`~deqshield.certify.models.CertifiableClassifier`.

What a certificate covers. ``certify(model, x, y, eps)`` returns certified[i] = True only if

1. the model answers at x_i (for a DEQ: every layer's returned state has infinity-norm
   residual <= delta) and
2. the lower bounds on the margins logit_y - logit_j, j != y, over the box
   B_i = {x' : ||x' - x_i||_inf <= eps} intersected with the valid range ``clip``, are > 0.

Then, for every x' in B_i, the model, evaluated in eval mode with its current weights, either
predicts y_i or abstains (a layer's residual at x' exceeds delta); it never predicts another
label. At x_i itself it predicts y_i. The argument (see :mod:`deqshield.certify.adjoint`):
interval propagation bounds every explicit layer; each DEQ layer's box contains every state of
residual <= delta for every input in the previous box (contraction L = ||W||_inf < 1 checked on
the actual weights; widening (L r + delta) / (1 - L) for the adjoint solver's residual r and
the model's tolerance delta), so the composition bounds what the model actually computes,
not an idealised exact fixed point. Bounds hold in exact arithmetic: floating-point rounding
(~1e-7 relative in float32) is not accounted for. Batch norm uses its running statistics, so
the model must be in eval mode.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from deqshield.certify.intervals import input_box
from deqshield.certify.models import CertifiableClassifier
from deqshield.errors import InputError
from deqshield.validation import check_labels


def certified_margins(model: CertifiableClassifier, x: Tensor, y: Tensor, eps: float,
                      clip: Optional[tuple[float, float]] = (0.0, 1.0)) -> Tensor:
    """Lower bounds (B, K) on logit_y - logit_j over the clipped eps-box around x (column y
    is 0). Differentiable; the model's mode decides how batch norm is bounded."""
    check_labels(y, x.shape[0], model.num_classes)
    return model.margin_bounds(input_box(x, eps, clip), y).lower


def certify(model: CertifiableClassifier, x: Tensor, y: Tensor, eps: float,
            clip: Optional[tuple[float, float]] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Certify the eps-box around each x_i for label y_i (see the module docstring).

    Returns:
        certified: (B,) bool.
        margins: (B, K) lower bounds on logit_y - logit_j over the box (column y is 0).

    Raises:
        InputError: the model is in training mode, or x, y, eps or clip are invalid.
        NotConvergedError: a DEQ layer is not a certified contraction.
    """
    if any(module.training for module in model.modules()):
        raise InputError("certify needs the model in eval mode (call model.eval()): training "
                         "mode normalises with batch statistics")
    with torch.no_grad():
        margins = certified_margins(model, x, y, eps, clip)
        answers = model.evaluate(x).valid
    others = margins.scatter(1, y[:, None], float("inf"))
    certified = (others > 0).all(dim=1) & answers
    return certified, margins
