"""Gradient paths (attack surrogates) through a DEQ's trajectory (Sec. 4-5 of
closer-look-neurips22): the final state, the simultaneous adjoint, the adjoint Broyden
comparison, unrolled intermediates and their ensembles, and the
full unrolls that are the exact gradients of the readouts."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.paths.adjoint_broyden import AdjointBroyden
from deqshield.paths.base import GradientPath, LossFn
from deqshield.paths.ensemble import EnsemblePath
from deqshield.paths.final_state import FinalState, final_state_logits
from deqshield.paths.simultaneous_adjoint import SimultaneousAdjoint
from deqshield.paths.through_defense import EntropyBPDA, ThroughEntropyReduction
from deqshield.paths.unrolled import UnrolledIntermediate
from deqshield.paths.unrolled_ensemble import UnrolledEnsemble
from deqshield.paths.unrolled_mean import UnrolledMean

PathSpec = Annotated[
    Union[FinalState, SimultaneousAdjoint, AdjointBroyden, UnrolledIntermediate,
          UnrolledEnsemble, UnrolledMean, EnsemblePath, ThroughEntropyReduction, EntropyBPDA],
    Field(discriminator="name"),
]
"""A gradient-path section of a config: ``{name: final|simultaneous-adjoint|adjoint-broyden|
unrolled|unrolled-ensemble|unrolled-mean|ensemble|through-entropy-reduction|entropy-bpda,
...settings}``."""

__all__ = ["AdjointBroyden", "EnsemblePath", "EntropyBPDA", "FinalState", "GradientPath", "LossFn",
           "PathSpec", "SimultaneousAdjoint", "ThroughEntropyReduction", "UnrolledEnsemble",
           "UnrolledIntermediate", "UnrolledMean",
           "final_state_logits"]
