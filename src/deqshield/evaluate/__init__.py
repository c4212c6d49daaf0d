"""The white-box evaluation protocol of closer-look-neurips22 (Sec. 5-6, Tables 2-3, 6):
defenses (readouts) x attacks (attack + gradient path), per-sample verdicts, the papers' min-max
aggregate and the per-sample worst case, obfuscation flags, transfer, early-state selection,
and results.json / report.md. The (i, K, lambda) sweep lives in ``deqshield.evaluate.sweep``,
the standard attack set in :mod:`.standard`, the dynamics diagnostics in :mod:`.diagnostics`
and the ``deqshield evaluate`` driver in :mod:`.run`."""

from deqshield.evaluate.flags import Flag, obfuscation_flags
from deqshield.evaluate.matrix import evaluate_matrix
from deqshield.evaluate.report import render_report, results_dict, write_report
from deqshield.evaluate.protocol import run_protocol
from deqshield.evaluate.selection import select_early_index
from deqshield.evaluate.specs import AttackSpec, Protocol, defense_label
from deqshield.evaluate.transfer import TransferResult, transfer
from deqshield.evaluate.verdicts import BROKEN, SKIPPED, SURVIVED, VerdictTable

__all__ = ["BROKEN", "SKIPPED", "SURVIVED", "AttackSpec", "Flag", "Protocol", "TransferResult",
           "VerdictTable", "defense_label", "evaluate_matrix", "obfuscation_flags",
           "render_report", "results_dict", "run_protocol", "select_early_index", "transfer",
           "write_report"]
