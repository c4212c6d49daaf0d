"""Run a :class:`~deqshield.protocol.specs.Protocol` end to end: matrix, flags, results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset, Subset

from deqshield.models import Classifier
from deqshield.protocol.flags import obfuscation_flags
from deqshield.protocol.matrix import evaluate_matrix
from deqshield.protocol.report import results_dict, write_report
from deqshield.protocol.specs import Protocol


def run_protocol(protocol: Protocol, model: Classifier, data: Dataset, *,
                 out_dir: Optional[Path] = None, meta: Optional[dict[str, Any]] = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate, flag and (if ``out_dir``) write results.json and report.md; returns results."""
    if protocol.quick:
        data = Subset(data, range(min(len(data), protocol.quick_samples)))  # type: ignore[arg-type]
    specs = protocol.attack_specs()
    table = evaluate_matrix(model, data, list(protocol.defenses), specs,
                            batch_size=protocol.batch_size, early_exit=protocol.early_exit,
                            seed=protocol.seed, progress=progress)
    flags = obfuscation_flags(table, specs, margin=protocol.obfuscation_margin,
                              threshold=protocol.nonconverged_threshold)
    results = results_dict(table, specs, flags, protocol, meta)
    if out_dir is not None:
        write_report(out_dir, results)
    return results
