"""``deqshield compare``: McNemar's exact test on two reports' per-sample verdicts."""

from __future__ import annotations

import json
import math

import pytest

from deqshield.cli import main
from deqshield.compare import (SampleVerdicts, Selection, compare, read_model, read_verdicts,
                               worst_over)
from deqshield.errors import InputError


def verdicts(kept: str, eps: float = 0.1, threat: str = "Linf") -> SampleVerdicts:
    return SampleVerdicts("test", threat, eps, {i: flag == "1" for i, flag in enumerate(kept)})


def test_the_p_value_is_the_two_sided_binomial_tail_of_the_discordant_pairs():
    # 2 images kept by both, 1 only by A, 9 only by B, 3 by neither.
    a = verdicts("11" + "1" + "0" * 9 + "000")
    b = verdicts("11" + "0" + "1" * 9 + "000")
    result = compare(a, b)
    assert (result.only_a, result.only_b, result.samples) == (1, 9, 15)
    assert result.difference == pytest.approx((1 - 9) / 15)
    assert result.p_value == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2 ** 10)
    assert compare(b, a).p_value == pytest.approx(result.p_value)
    assert compare(a, a).p_value == 1.0 and compare(a, a).difference == 0


def test_pairing_tells_apart_what_separate_error_bars_cannot():
    # 1000 images, 40 only A keeps and 15 only B keeps: 2.5 points apart, well inside two
    # separate standard errors (~1.5 points each at 70%) but not a coin flip per discordant image.
    common = "1" * 680 + "0" * 265
    result = compare(verdicts(common + "1" * 40 + "0" * 15), verdicts(common + "0" * 40 + "1" * 15))
    assert result.difference == pytest.approx(0.025)
    assert result.p_value < 0.01


def test_reports_must_cover_the_same_images_at_the_same_radius():
    with pytest.raises(InputError, match="different test images"):
        compare(verdicts("101"), verdicts("1010"))
    with pytest.raises(InputError, match="different radii"):
        compare(verdicts("101", 0.1), verdicts("101", 0.3))
    with pytest.raises(InputError, match="different radii"):
        compare(verdicts("101", 0.5), verdicts("101", 0.5, "L2"))


@pytest.mark.parametrize("contents, message", [
    ("{not json", "not a readable JSON report"),
    ("[1, 2]", "not a results.json, certify.json, smoothing.json or independent"),
    ('{"defenses": []}', "lacks what deqshield writes"),
    ('{"attacked": 0, "defenses": {}}', "only lower the evaluation it checked"),
])
def test_files_that_are_not_reports_get_a_one_line_error(tmp_path, contents, message):
    path = tmp_path / "report.json"
    path.write_text(contents)
    with pytest.raises(InputError, match=message):
        read_verdicts(path)
    assert main(["compare", str(path), str(path)]) == 2
    with pytest.raises(InputError, match="does not exist"):
        read_verdicts(tmp_path / "missing.json")


def test_several_reports_of_one_model_count_a_sample_robust_only_if_all_do():
    first, second = verdicts("1101"), verdicts("1011")
    combined = worst_over([first, second])
    assert [combined.robust[i] for i in range(4)] == [True, False, False, True]
    assert worst_over([first]) is first
    with pytest.raises(InputError, match="different test images"):
        worst_over([first, verdicts("11011")])
    part = SampleVerdicts("part", "Linf", 0.1, {3: False})  # a check of image 3 only
    assert [worst_over([first, part]).robust[i] for i in range(4)] == [True, True, False, False]
    with pytest.raises(InputError, match="different radii"):
        worst_over([first, verdicts("1101", 0.3)])
    with pytest.raises(InputError, match="at least one"):
        worst_over([])


def certify_report(path, certified: str, eps: float = 0.1):
    path.write_text(json.dumps({"eps": eps, "certified_broken_by_pgd": 0, "per_sample": [
        {"index": i, "certified": flag == "1"} for i, flag in enumerate(certified)]}))
    return str(path)


def test_the_cli_combines_the_further_reports_of_each_side(tmp_path, capsys):
    a1 = certify_report(tmp_path / "a1.json", "111100")
    a2 = certify_report(tmp_path / "a2.json", "110110")
    b = certify_report(tmp_path / "b.json", "101000")
    assert main(["compare", a1, b]) == 0
    assert "kept by A only 2, by B only 0" in capsys.readouterr().out
    assert main(["compare", a1, b, "--also-a", a2]) == 0
    out = capsys.readouterr().out
    assert "A: " + a1 in out and a2 in out and "kept by A only 2, by B only 1" in out
    assert main(["compare", a1, b, "--also-b", certify_report(tmp_path / "c.json", "1111111")]) == 2


def evaluation_report(path, robust: dict[str, list[int]], samples: int, best: str):
    path.write_text(json.dumps({
        "samples": samples, "protocol": {"eps": 0.1},
        "aggregate": {"worst_case": {"defense": best}},
        "defenses": [{"label": label, "robust_samples": kept} for label, kept in robust.items()]}))
    return path


def outside_report(path, broken: dict[str, list[int]], start: int, stop: int):
    """An independent_attack.json as benchmarks/independent_attack.py writes it."""
    path.write_text(json.dumps({
        "config": {"eps": 0.1}, "samples": [start, stop], "attacked": stop - start,
        "defenses": {label: {"robust": 0, "broken_robust": found}
                     for label, found in broken.items()}}))
    return path


def test_independent_attack_findings_lower_the_evaluation_they_checked(tmp_path, capsys):
    evaluation = evaluation_report(tmp_path / "results.json",
                                   {"final": [0, 1, 2, 4, 5], "early": [0, 1, 2, 3]}, 6, "final")
    first_half = outside_report(tmp_path / "a.json", {"final": [1], "early": [0, 2]}, 0, 3)
    second_half = outside_report(tmp_path / "b.json", {"final": [5], "early": []}, 3, 6)
    combined = read_model([evaluation, first_half, second_half])  # the best defense: final
    assert combined.defense == "final"
    assert [combined.robust[i] for i in range(6)] == [True, False, True, False, True, False]
    early = read_model([evaluation, first_half], Selection(defense="early"))
    assert [early.robust[i] for i in range(6)] == [False, True, False, True, False, False]
    assert read_verdicts(first_half, Selection(defense="final")).lowers_only
    with pytest.raises(InputError, match="no findings for the defense 'ensemble'"):
        read_verdicts(first_half, Selection(defense="ensemble"))
    with pytest.raises(InputError, match="only lower"):
        read_model([first_half, evaluation])
    with pytest.raises(InputError, match="only lower"):
        compare(read_verdicts(first_half, Selection(defense="final")), combined)
    assert main(["compare", str(evaluation), str(evaluation), "--also-a", str(first_half),
                 "--also-a", str(second_half)]) == 0
    assert "kept by A only 0, by B only 2" in capsys.readouterr().out
    assert main(["compare", str(first_half), str(evaluation)]) == 2
