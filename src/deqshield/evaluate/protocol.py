"""Run a :class:`~deqshield.evaluate.specs.Protocol` end to end: screening, matrix, flags,
results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset, Subset

from deqshield.models import Classifier
from deqshield.evaluate.flags import obfuscation_flags
from deqshield.evaluate.matrix import evaluate_matrix
from deqshield.evaluate.report import results_dict, write_report
from deqshield.evaluate.screening import screen_attacks, with_screened
from deqshield.evaluate.specs import Protocol


def run_protocol(protocol: Protocol, model: Classifier, data: Dataset, *,
                 out_dir: Optional[Path] = None, meta: Optional[dict[str, Any]] = None,
                 progress: bool = True) -> dict[str, Any]:
    """Screen (if the protocol says so), evaluate, flag and (if ``out_dir``) write
    results.json and report.md; returns the results."""
    if protocol.quick:
        data = Subset(data, range(min(len(data), protocol.quick_samples)))  # type: ignore[arg-type]
    specs = protocol.attack_specs()
    defenses = list(protocol.defenses)
    options = dict(batch_size=protocol.batch_size, seed=protocol.seed, progress=progress)
    screening = None
    if protocol.screening is not None:
        screening = screen_attacks(protocol.screening, model, data, defenses, specs, **options)
        specs = screening.order
    table = evaluate_matrix(model, data, defenses, specs, early_exit=protocol.early_exit,
                            **options)
    if screening is not None:
        specs = with_screened(table, screening)
    flags = obfuscation_flags(table, specs, margin=protocol.obfuscation_margin,
                              threshold=protocol.nonconverged_threshold)
    results = results_dict(table, specs, flags, protocol, meta)
    results["notes"] = protocol.caveats()
    if screening is not None:
        results["screening"] = screening.summary()
    if out_dir is not None:
        write_report(out_dir, results)
    return results
