"""Exact binomial confidence bounds and the binomial test, without scipy.

For K ~ Binomial(n, p) the one-sided Clopper-Pearson (1950) bounds at level alpha are

    lower(k) = 0 if k = 0, else the p with  P_p[K >= k] = alpha,
    upper(k) = 1 if k = n, else the p with  P_p[K <= k] = alpha,

so that P[p >= lower(K)] >= 1 - alpha and P[p <= upper(K)] >= 1 - alpha for every p. The tails
are monotone in p, so each bound is found by bisection on p; the tail itself is summed in log
space, log C(n, j) = lgamma(n + 1) - lgamma(j + 1) - lgamma(n - j + 1), in float64. The
bisection returns the conservative end of its final bracket (the smaller p for a lower bound,
the larger for an upper bound), so rounding never makes a bound optimistic by more than the
float64 tail error (~1e-12). Closed forms: lower(n) = alpha^(1/n), upper(0) = 1 - alpha^(1/n).

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via Randomized Smoothing",
use lower() in CERTIFY and the two-sided binomial test of H0: p = 1/2 in PREDICT.
"""

from __future__ import annotations

import math

import torch

from deqshield.errors import InputError

_BISECTIONS = 64


def _check(k: int, n: int, alpha: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise InputError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")


def binomial_tail(k: int, n: int, p: float, *, upper: bool) -> float:
    """P[K >= k] (``upper``) or P[K <= k] for K ~ Binomial(n, p), summed in log space."""
    if p <= 0.0:
        return 1.0 if (not upper or k <= 0) else 0.0
    if p >= 1.0:
        return 1.0 if (upper or k >= n) else 0.0
    j = torch.arange(k, n + 1, dtype=torch.float64) if upper else \
        torch.arange(0, k + 1, dtype=torch.float64)
    if j.numel() == 0:
        return 0.0
    log_terms = (math.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)
                 + j * math.log(p) + (n - j) * math.log1p(-p))
    return min(1.0, float(torch.logsumexp(log_terms, dim=0).exp()))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on p from k successes in n trials."""
    _check(k, n, alpha)
    if k == 0:
        return 0.0
    low, high = 0.0, 1.0  # P_p[K >= k] increases with p: alpha lies between the ends
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if binomial_tail(k, n, middle, upper=True) < alpha:
            low = middle
        else:
            high = middle
    return low


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence bound on p from k successes in n trials."""
    _check(k, n, alpha)
    if k == n:
        return 1.0
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


def binomial_test_two_sided(k: int, n: int) -> float:
    """p-value of the two-sided exact test of H0: p = 1/2 after k successes in n trials
    (symmetric null, so 2 P[K >= max(k, n - k)], capped at 1)."""
    if n < 1 or not 0 <= k <= n:
        raise InputError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return min(1.0, 2.0 * binomial_tail(max(k, n - k), n, 0.5, upper=True))
