"""The public API: every name a user imports, in one place, grouped along the flow
input -> trajectory -> readout / gradient path -> attack -> protocol -> report, with training,
certification and the files around them::

    from deqshield.api import Broyden, ConvDEQSettings, PGD, UnrolledIntermediate, Early

Each name lives in the module the guide's module map names (``docs/guide.md``); this module
only gathers them. The command line (``deqshield ...``) drives the same functions.
"""

from deqshield import zoo
from deqshield.attacks import PGD, AttackResult, AutoAttackBridge
from deqshield.certify import CerDEQSettings, CNN7Settings, certify
from deqshield.certify.run import certify_run
from deqshield.compare import (PairedComparison, SampleVerdicts, Selection, compare,
                               read_model, read_verdicts, worst_over)
from deqshield.convergence import ConvergencePolicy, convergence_policy, set_convergence_policy
from deqshield.data import ArrayDataset, load_dataset
from deqshield.errors import (CheckpointError, ConfigError, DataError, DEQShieldError, InputError,
                              NonConvergenceWarning, NotConvergedError)
from deqshield.evaluate import AttackSpec, Protocol, TransferResult, run_protocol, transfer
from deqshield.evaluate.run import evaluate_model, evaluate_run
from deqshield.evaluate.standard import AttackBudget, standard_protocol
from deqshield.gradients import Backprop, Implicit, Phantom
from deqshield.io.config import load_config, parse_config
from deqshield.io.runs import load_run
from deqshield.models import (MDEQ_LARGE, MDEQ_XL, ConvDEQSettings, DEQClassifier, DenseDEQSettings,
                              MDEQSettings, ResNet18Settings, SmallCNNSettings)
from deqshield.paths import (AdjointBroyden, EnsemblePath, EntropyBPDA, FinalState,
                             SimultaneousAdjoint, ThroughEntropyReduction, UnrolledEnsemble,
                             UnrolledIntermediate, UnrolledMean)
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.smoothing import Serialized, Smoothing
from deqshield.smoothing.run import smooth_run
from deqshield.solvers import Anderson, Broyden, Picard, Trajectory
from deqshield.training import PGDAT, TRADES, FastAT, FreeAT, Standard, fit
from deqshield.training.noise import GaussianNoise
from deqshield.training.objectives import Certified
from deqshield.training.run import train

__all__ = [
    # input
    "ArrayDataset", "load_dataset",
    # trajectory: models (settings whose build() returns the module) and solvers
    "ConvDEQSettings", "DenseDEQSettings", "MDEQSettings", "MDEQ_LARGE", "MDEQ_XL",
    "SmallCNNSettings", "ResNet18Settings", "DEQClassifier",
    "Picard", "Anderson", "Broyden", "Trajectory", "ConvergencePolicy", "convergence_policy",
    "set_convergence_policy",
    # readouts (defenses), training-gradient modes and attack gradient paths
    "Final", "Early", "Ensemble", "EntropyReduction",
    "Implicit", "Phantom", "Backprop",
    "FinalState", "SimultaneousAdjoint", "AdjointBroyden", "UnrolledIntermediate",
    "UnrolledEnsemble", "UnrolledMean", "EnsemblePath", "ThroughEntropyReduction", "EntropyBPDA",
    # attacks
    "PGD", "AutoAttackBridge", "AttackResult",
    # the white-box protocol and its report
    "AttackSpec", "Protocol", "AttackBudget", "standard_protocol", "run_protocol",
    "transfer", "TransferResult", "evaluate_model", "evaluate_run",
    # comparing two reports per sample
    "read_model", "read_verdicts", "Selection", "compare", "SampleVerdicts", "PairedComparison",
    "worst_over",
    # training
    "train", "fit", "Standard", "PGDAT", "TRADES", "FastAT", "FreeAT", "GaussianNoise",
    "Certified",
    # certification: interval bounds (CerDEQ) and randomized smoothing
    "CerDEQSettings", "CNN7Settings", "certify", "certify_run", "Smoothing", "Serialized",
    "smooth_run",
    # configs, runs and the model zoo
    "load_config", "parse_config", "load_run", "zoo",
    # errors
    "DEQShieldError", "InputError", "ConfigError", "DataError", "CheckpointError",
    "NotConvergedError", "NonConvergenceWarning",
]
