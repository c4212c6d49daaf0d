"""Randomized smoothing for DEQs: l2 certificates (Cohen et al. 2019), serialized smoothing
with a corrected certificate (Gao et al. 2024), a smoothed-classifier attack and reports."""

from deqshield.smoothing.attack import SmoothedSoftmax, broken_certificates, smoothed_attack
from deqshield.smoothing.bounds import (binomial_test_two_sided, clopper_pearson_lower,
                                        clopper_pearson_upper)
from deqshield.smoothing.report import certified_accuracy, certify_samples, summarize
from deqshield.smoothing.serialized import WarmChain, serialized_bound
from deqshield.smoothing.sampling import LowerBound, Serialized, Smoothing
from deqshield.smoothing.smoothed import ABSTAIN, Certificate, certify, predict, radius_of

__all__ = ["ABSTAIN", "Certificate", "LowerBound", "Serialized", "SmoothedSoftmax", "Smoothing",
           "WarmChain", "binomial_test_two_sided", "broken_certificates", "certified_accuracy",
           "certify", "certify_samples", "clopper_pearson_lower", "clopper_pearson_upper",
           "predict", "radius_of", "serialized_bound", "smoothed_attack", "summarize"]
