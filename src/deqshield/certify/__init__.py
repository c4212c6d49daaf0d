"""Certified DEQs (CerDEQ, Li et al. ICML 2022) with sound certificates.

The flow: input box -> interval bounds through explicit layers (:mod:`.intervals`) and through
each DEQ layer's adjoint DEQ (:mod:`.adjoint`) -> certified margins (:mod:`.certificate`).
Fusion weights are Björck-orthogonalised and scaled so the adjoint DEQ is a contraction
(:mod:`.orthogonal`, :mod:`.fusion`); :mod:`.layers`, :mod:`.models` and :mod:`.baseline`
build the classifiers, :mod:`.initialization` and :mod:`.objective` the Fast-IBP-style
objective; :mod:`.run` is the ``deqshield certify`` driver.
"""

from deqshield.certify.adjoint import (AdjointSolve, ConvFusion, DenseFusion, EquilibriumBound,
                                       FusionOperator, equilibrium_interval, interval_map,
                                       unrolled_interval)
from deqshield.certify.baseline import (CNN7, CNN7Settings, cnn7_matching_budget,
                                        cnn7_parameter_count)
from deqshield.certify.certificate import certified_margins, certify
from deqshield.certify.fusion import FusionWeight, Parametrization
from deqshield.certify.initialization import deq_extractor_init_, ibp_init_, ibp_init_model_
from deqshield.certify.intervals import (Interval, batch_norm_interval, conv2d_interval,
                                         input_box, linear_interval, margin_interval, propagate)
from deqshield.certify.layers import CerDEQLayer, EquilibriumSettings
from deqshield.certify.models import (CerDEQ, CerDEQSettings, CertifiableClassifier,
                                      CertifiableOutput)
from deqshield.certify.orthogonal import (bjorck, conv_operator_norm, infinity_norm,
                                          scaled_orthogonal, second_scaling)
from deqshield.certify.objective import (CertifiedLoss, CertifiedObjective, EpsilonSchedule,
                                         certified_loss, certified_objective,
                                         relu_balance_regularizer, tightness_regularizer)

__all__ = [
    "AdjointSolve", "CNN7", "CNN7Settings", "CerDEQ", "CerDEQSettings", "CerDEQLayer",
    "CertifiableClassifier", "CertifiableOutput", "CertifiedLoss", "CertifiedObjective",
    "ConvFusion", "DenseFusion", "EpsilonSchedule", "EquilibriumBound", "EquilibriumSettings",
    "FusionOperator",
    "FusionWeight", "Interval", "Parametrization", "batch_norm_interval", "bjorck",
    "certified_loss", "certified_margins", "certified_objective", "certify",
    "cnn7_matching_budget", "cnn7_parameter_count", "conv2d_interval", "conv_operator_norm",
    "deq_extractor_init_", "equilibrium_interval", "ibp_init_", "ibp_init_model_", "infinity_norm",
    "input_box", "interval_map", "linear_interval", "margin_interval", "propagate",
    "relu_balance_regularizer", "scaled_orthogonal", "second_scaling", "tightness_regularizer",
    "unrolled_interval",
]
