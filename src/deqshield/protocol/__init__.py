"""The white-box evaluation protocol of closer-look-neurips22 (Sec. 5-6, Tables 2-3, 6):
defenses (readouts) x attacks (attack + gradient path), per-sample verdicts, the papers' min-max
aggregate and the per-sample worst case, obfuscation flags, transfer, early-state selection,
and results.json / report.md. The (i, K, lambda) sweep lives in ``deqshield.protocol.sweep``."""

from deqshield.protocol.flags import Flag, obfuscation_flags
from deqshield.protocol.matrix import evaluate_matrix
from deqshield.protocol.report import render_report, results_dict, write_report
from deqshield.protocol.run import run_protocol
from deqshield.protocol.selection import select_early_index
from deqshield.protocol.specs import AttackSpec, Protocol, defense_label
from deqshield.protocol.transfer import TransferResult, transfer
from deqshield.protocol.verdicts import BROKEN, SKIPPED, SURVIVED, VerdictTable

__all__ = ["BROKEN", "SKIPPED", "SURVIVED", "AttackSpec", "Flag", "Protocol", "TransferResult",
           "VerdictTable", "defense_label", "evaluate_matrix", "obfuscation_flags",
           "render_report", "results_dict", "run_protocol", "select_early_index", "transfer",
           "write_report"]
