"""The white-box protocol on a tiny conv DEQ and on hand-made verdict tables."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from conftest import tiny_conv_deq
from deqshield.attacks import PGD, AutoAttackBridge
from deqshield.models import ConvDEQSettings
from deqshield.solvers import Anderson
from deqshield.paths import FinalState
from deqshield.evaluate.verdicts import CLEAN_ERROR
from deqshield.evaluate import (BROKEN, SKIPPED, SURVIVED, AttackSpec, Protocol, VerdictTable,
                                evaluate_matrix, obfuscation_flags, run_protocol,
                                select_early_index, transfer)
from deqshield.readouts import Early, Ensemble, Final
from deqshield.readouts.base import predicted_classes

PGD_FIXED = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
SOLVER = Anderson(max_iter=4, tol=1e-3)  # small: keeps the suite fast


@pytest.fixture(scope="module")
def setup():
    return tiny_conv_deq(samples=8, solver=SOLVER, mistakes_every=3)


def test_eps_zero_every_attack_gives_clean_accuracy(setup):
    model, data = setup
    aa = AutoAttackBridge(attacks=("apgd-ce", "square"), apgd_iterations=2, square_queries=5)
    specs = [spec.with_eps(0.0) for spec in (AttackSpec(attack=PGD_FIXED),
                                             AttackSpec(attack=PGD(steps=1)),
                                             AttackSpec(attack=aa))]
    table = evaluate_matrix(model, data, [Final(), Early(index=1)], specs, progress=False)
    for defense in table.defenses:
        for attack in table.attacks:
            assert table.cell_accuracy(defense, attack) == table.clean_accuracy(defense)
        assert table.worst_case_accuracy(defense) == table.clean_accuracy(defense)


def test_progress_counts_attacks_and_each_columns_samples(setup, capsys):
    model, data = setup
    specs = [AttackSpec(attack=PGD_FIXED, label="a"), AttackSpec(attack=PGD_FIXED, label="b")]
    evaluate_matrix(model, data, [Final()], specs, batch_size=4)
    shown = capsys.readouterr().err
    assert "2/2 attacks" in shown  # the column bar: no sample-rate ETA across columns
    assert "samples" in shown and "sample/s" in shown  # the current column's own bar


def test_early_exit_matches_exhaustive_per_sample(setup):
    model, data = setup
    specs = [AttackSpec(attack=PGD(eps=0.2, step_size=0.1, steps=2), label="ce"),
             AttackSpec(attack=PGD(eps=0.2, step_size=0.1, steps=2, loss="margin"),
                        label="margin")]  # random starts: drawn per sample, not per batch
    defenses = [Final(), Ensemble()]
    full = evaluate_matrix(model, data, defenses, specs, batch_size=3, progress=False)
    fast = evaluate_matrix(model, data, defenses, specs, batch_size=3, early_exit=True,
                           progress=False)
    for defense in full.defenses:
        assert torch.equal(full.robust(defense), fast.robust(defense))
        assert full.cumulative_accuracy(defense) == fast.cumulative_accuracy(defense)
        first = full.attacks[0]
        assert torch.equal(full.verdicts[defense, first], fast.verdicts[defense, first])
        assert full.broken_by(defense) == fast.broken_by(defense)  # attribution kept
        assert CLEAN_ERROR in full.broken_by(defense)
        for attack in full.attacks:
            attacked, survived = fast.attacked(defense, attack)
            assert 0 <= survived <= attacked


def _table() -> VerdictTable:
    """3 defenses x 2 attacks on 4 samples, built by hand."""
    t, f = True, False
    clean = {"A": torch.tensor([t, t, t, f]), "B": torch.tensor([t, t, t, t]),
             "C": torch.tensor([t, t, f, f])}
    s, b, k = SURVIVED, BROKEN, SKIPPED
    verdicts = {("A", "pgd"): [s, s, b, b], ("A", "square"): [s, b, s, b],
                ("B", "pgd"): [s, s, b, b], ("B", "square"): [b, b, s, s],
                ("C", "pgd"): [s, s, b, b], ("C", "square"): [s, k, b, b]}
    return VerdictTable(["A", "B", "C"], ["pgd", "square"], clean,
                        {key: torch.tensor(v, dtype=torch.int8) for key, v in verdicts.items()})


def test_aggregates_on_hand_made_table():
    table = _table()
    assert table.cell_accuracy("A", "pgd") == 0.5
    assert table.min_over_attacks("A") == 0.5 and table.min_over_attacks("B") == 0.5
    assert table.strongest_attack("B") == "pgd"  # first on ties
    assert table.cell_accuracy("C", "square") is None
    assert table.min_max() is None  # a cell of C is unknown
    del table.verdicts["C", "square"], table.clean["C"]
    table.defenses.remove("C")
    table.verdicts["C", "x"] = torch.zeros(4, dtype=torch.int8)
    assert table.min_max() == ("A", 0.5)
    # per sample: A keeps sample 0 only, B none: stricter than min-max
    assert table.worst_case() == ("A", 0.25)
    assert table.worst_case_accuracy("B") == 0.0
    assert table.cumulative_accuracy("A") == [0.5, 0.25]


def test_a_screened_column_leaves_min_over_attacks_at_or_above_the_worst_case():
    clean = {"A": torch.ones(4, dtype=torch.bool)}
    full = VerdictTable(["A"], ["pgd"], clean,
                        {("A", "pgd"): torch.tensor([SURVIVED] * 3 + [BROKEN], dtype=torch.int8)})
    screened = VerdictTable(["A"], ["weak"], {"A": clean["A"][:1]},
                            {("A", "weak"): torch.tensor([BROKEN], dtype=torch.int8)})
    full.add_columns(screened, ["weak"])
    assert full.cell_accuracy("A", "weak") == 0.0  # over its one screened sample
    assert full.worst_case_accuracy("A") == 0.5
    assert full.full_columns("A") == ["pgd"]
    assert full.min_over_attacks("A") == 0.75 >= full.worst_case_accuracy("A")
    assert full.strongest_attack("A") == "pgd"


def test_a_sample_with_nan_logits_is_never_correct():
    class Diverged(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    assert predicted_classes(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])).tolist() == [-1, 1]
    table = evaluate_matrix(Diverged(), TensorDataset(x, y), [Final()],
                            [AttackSpec(attack=PGD(eps=0.1, steps=1), label="pgd")],
                            progress=False)
    assert table.clean["final"].tolist() == [False, False]


def test_square_flag_and_autoattack_findings():
    table = _table()
    specs = [AttackSpec(label="pgd"),
             AttackSpec(attack=AutoAttackBridge(attacks=("square",)), label="square")]
    table.verdicts["A", "square"] = torch.tensor([b := BROKEN, b, b, b], dtype=torch.int8)
    table.findings["B", "pgd"] = ["it seems to be a dynamic defense!"]
    table.nonconverged["B", "square"] = 0.5
    flags = obfuscation_flags(table, specs, margin=0.01, threshold=0.05)
    kinds = {(flag.kind, flag.defense) for flag in flags}
    assert kinds == {("square-beats-gradient", "A"), ("autoattack", "B"), ("nonconverged", "B")}
    # early exit: the pgd cell of A is unknown, and square alone breaks a sample pgd left
    table.verdicts["A", "pgd"] = torch.tensor([SURVIVED, SURVIVED, BROKEN, BROKEN],
                                              dtype=torch.int8)
    table.verdicts["A", "square"] = torch.tensor([SURVIVED, BROKEN, SKIPPED, BROKEN],
                                                 dtype=torch.int8)
    (flag,) = [f for f in obfuscation_flags(table, specs, margin=0.01, threshold=0.05)
               if f.defense == "A"]
    assert flag.kind == "square-beats-gradient" and "alone breaks 25.00%" in flag.message


def test_run_protocol_writes_consistent_results(setup, tmp_path):
    model, data = setup
    protocol = Protocol(defenses=(Final(), Early(index=1)),
                        attacks=(AttackSpec(attack=PGD_FIXED, label="pgd-ce"),
                                 AttackSpec(attack=PGD(steps=1), path=FinalState())),
                        eps=0.1, quick=True, quick_samples=6, batch_size=4)
    results = run_protocol(protocol, model, data, out_dir=tmp_path, progress=False)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    assert stored["samples"] == 6 and stored["schema_version"] == 1
    rows = stored["defenses"]
    assert [row["label"] for row in rows] == ["final", "early(index=1)"]
    for row in rows:
        cells = [cell["robust_accuracy"] for cell in row["cells"]]
        assert row["min_over_attacks"] == min(cells)
        assert row["worst_case_accuracy"] <= row["min_over_attacks"] <= row["clean_accuracy"]
        assert len(row["robust_samples"]) == round(6 * row["worst_case_accuracy"])
    best = max(rows, key=lambda row: row["min_over_attacks"])
    assert stored["aggregate"]["min_max"]["robust_accuracy"] == best["min_over_attacks"]
    report = (tmp_path / "report.md").read_text()
    assert "| Defense | Clean | pgd-ce |" in report and "**<u>" in report


def test_transfer_at_eps_zero_scores_clean(setup):
    model, data = setup
    other = ConvDEQSettings(channels=4, solver=SOLVER).build((1, 8, 8), 10).eval()
    result = transfer((model, Final()), (other, Ensemble()),
                      AttackSpec(attack=PGD_FIXED).with_eps(0.0), data)
    assert torch.equal(result.robust, result.clean)
    attacked = transfer((model, Final()), (other, Ensemble()), AttackSpec(attack=PGD_FIXED), data)
    assert attacked.robust_accuracy <= attacked.clean_accuracy


def test_select_early_index(setup):
    model, data = setup
    best, scores = select_early_index(model, data, [1, 2], attack=PGD_FIXED)
    assert set(scores) == {1, 2} and scores[best] == max(scores.values())


def test_intermediate_sweep_specs():
    sweep = pytest.importorskip("deqshield.evaluate.sweep",
                                reason="deqshield.paths.UnrolledIntermediate not available yet")
    specs = list(sweep.intermediate_sweep([1, 2, 3], PGD_FIXED))
    assert len(specs) == 3 * 9 * 2
    assert len({spec.title for spec in specs}) == len(specs)
    assert {(s.path.index, s.path.steps, s.path.damping) for s in specs} == {
        (i, k, d) for i in (1, 2, 3) for k in range(1, 10) for d in (0.5, 1.0)}
