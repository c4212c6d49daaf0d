"""Randomized smoothing: exact binomial bounds, CERTIFY / PREDICT against the closed form of a
linear classifier, the serialized (warm-started) chain and its corrected certificate, the
smoothed l2 attack, the noise and l2 PGD-AT objectives, and ``deqshield smooth``."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from statistics import NormalDist

import pytest
import torch
from torch import Tensor, nn
from conftest import CountedCalls

from deqshield.attacks.pgd import PGD
from deqshield.cli import main
from deqshield.compare import Selection, read_verdicts
from deqshield.io.config import parse_config
from deqshield.errors import InputError
from deqshield.models import DenseDEQSettings
from deqshield.models.base import Classifier
from deqshield.smoothing import (ABSTAIN, Serialized, Smoothing, WarmChain,
                                 binomial_test_two_sided, broken_certificates, certify,
                                 clopper_pearson_lower, clopper_pearson_upper, predict,
                                 serialized_bound, smoothed_attack)
from deqshield.smoothing.sampling import base_predictions
from deqshield.solvers import Anderson, Picard
from deqshield.validation import unbounded_inputs
from deqshield.training.noise import GaussianNoise
from deqshield.training.forward import StepRandomness
from deqshield.training.objectives import PGDAT, Standard
from deqshield.training.run import train

PHI = NormalDist()


def exact_upper_tail(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k] in exact rational arithmetic."""
    q = Fraction(p)
    return float(sum(math.comb(n, j) * q ** j * (1 - q) ** (n - j) for j in range(k, n + 1)))


@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_closed_forms(n, alpha):
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), abs=1e-12)
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), abs=1e-12)
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_upper(n, n, alpha) == 1.0


@pytest.mark.parametrize("k, n", [(1, 5), (3, 10), (37, 50), (60, 100)])
def test_clopper_pearson_solves_the_exact_binomial_tail(k, n):
    alpha = 0.01
    lower = clopper_pearson_lower(k, n, alpha)
    assert exact_upper_tail(k, n, lower) == pytest.approx(alpha, rel=1e-8)
    assert exact_upper_tail(k, n, lower * (1 + 1e-6)) > alpha  # the bound is the root
    upper = clopper_pearson_upper(k, n, alpha)
    assert 1 - exact_upper_tail(k + 1, n, upper) == pytest.approx(alpha, rel=1e-8)
    assert lower < k / n < upper


def test_binomial_test_is_the_exact_two_sided_tail():
    assert binomial_test_two_sided(10, 10) == pytest.approx(2 * 0.5 ** 10)
    assert binomial_test_two_sided(3, 10) == binomial_test_two_sided(7, 10)
    assert binomial_test_two_sided(60, 100) == pytest.approx(2 * exact_upper_tail(60, 100, 0.5))
    assert binomial_test_two_sided(5, 10) == 1.0
    with pytest.raises(InputError):
        clopper_pearson_lower(5, 4, 0.01)


class Linear(Classifier):
    """f(x) = argmax(W x + b) with two classes; w = W_0 - W_1 decides."""

    def __init__(self, w: Tensor, b: float):
        super().__init__((w.numel(),), 2)
        self.layer = nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.layer.weight.copy_(torch.stack([w / 2, -w / 2]))
            self.layer.bias.copy_(torch.tensor([b / 2, -b / 2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


W, B, SIGMA = torch.tensor([3.0, -4.0]), 0.5, 0.5  # ||w|| = 5


def exact_radius(x: Tensor) -> float:
    """The smoothed classifier of a linear f is f; its l2 radius is |w.x + b| / ||w||."""
    return abs(float(W @ x[0]) + B) / float(W.norm())


def test_certify_matches_the_linear_closed_form_and_converges():
    model = Linear(W, B).eval()
    x = torch.tensor([[0.1, 0.0]])  # margin 0.8, p_A = Phi(0.8 / 2.5) = 0.626
    radii = []
    for n in (500, 100_000):
        settings = Smoothing(sigma=SIGMA, n0=100, n=n, alpha=0.001, batch=100_000)
        certificate = certify(model, x, settings, torch.Generator().manual_seed(0))
        p_a = PHI.cdf(0.8 / (SIGMA * 5))
        assert certificate.prediction == 0
        assert certificate.bound.count / n == pytest.approx(p_a, abs=4 * math.sqrt(0.25 / n))
        assert certificate.radius == pytest.approx(SIGMA * PHI.inv_cdf(certificate.bound.p_lower))
        assert certificate.radius <= exact_radius(x)
        radii.append(certificate.radius)
    assert radii[0] < radii[1] and radii[1] == pytest.approx(exact_radius(x), rel=0.05)


def test_certify_and_predict_abstain_when_the_top_class_is_not_significantly_ahead():
    model = Linear(W, B).eval()
    boundary = torch.tensor([[0.0, 0.125]])  # w.x + b = 0: both classes have p = 1/2
    settings = Smoothing(sigma=SIGMA, n0=100, n=2000, batch=2000)
    assert certify(model, boundary, settings, torch.Generator().manual_seed(1)).prediction \
        == ABSTAIN
    assert predict(model, boundary, settings, torch.Generator().manual_seed(1)) == ABSTAIN
    far = torch.tensor([[-1.0, 0.0]])  # margin -2.5: class 1
    assert predict(model, far, settings, torch.Generator().manual_seed(1)) == 1


def test_radius_never_exceeds_the_true_radius():
    model = Linear(W, B).eval()
    settings = Smoothing(sigma=SIGMA, n0=50, n=300, alpha=0.01, batch=300)
    generator = torch.Generator().manual_seed(2)
    points = torch.randn(40, 2, generator=generator) * 0.6
    certified = 0
    for point in points:
        x = point[None]
        certificate = certify(model, x, settings, generator)
        assert certificate.radius <= exact_radius(x)
        certified += certificate.prediction != ABSTAIN
    assert certified > 20


def contractive_deq(solver) -> nn.Module:
    torch.manual_seed(0)
    return DenseDEQSettings(width=12, init_scale=0.4, solver=solver).build((5,), 3).eval()


@pytest.mark.parametrize("chained", [False, True])
@pytest.mark.parametrize("solver", [Picard(max_iter=80, tol=1e-7),
                                    Anderson(max_iter=40, tol=1e-7)])
def test_warm_started_chain_reaches_the_independent_predictions(solver, chained):
    """K warm steps from the previous draw's (chained) or the cold batch's equilibrium land
    much closer to the equilibrium's logits than K steps from z_0, and classify every draw as
    the independent full solves do."""
    model = contractive_deq(solver)
    readout = Smoothing(sigma=1.0).readout
    chain = WarmChain(model, readout, steps=8, chained=chained)
    short = dataclasses.replace(solver, max_iter=8, final_residual=False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, generator=generator)
    for _ in range(6):
        noisy = x + 0.1 * torch.randn(64, 5, generator=generator)
        warm = chain.logits(noisy)
        with torch.no_grad(), unbounded_inputs():
            exact = readout.logits(model, noisy)
            cold_short = model.head(model.trajectory(noisy, solver=short).final)
        warm_error = (warm - exact).norm()
        assert warm_error < 0.5 * (cold_short - exact).norm()
        assert warm_error < 1e-4 * exact.norm()
        assert torch.equal(warm.argmax(dim=1), base_predictions(model, readout, noisy))


@pytest.mark.parametrize("chained", [False, True])
def test_warm_batches_start_from_the_cold_batch_unless_chained(chained):
    """Anchored, a warm batch's answers depend on the first (cold) batch only, not on the
    batches between; chained (SRS), they depend on the previous batch."""
    model = contractive_deq(Picard(max_iter=40, tol=1e-7))
    readout = Smoothing(sigma=1.0).readout
    generator = torch.Generator().manual_seed(0)
    cold, first, second = (torch.randn(16, 5, generator=generator) for _ in range(3))

    def warm_logits(order):
        chain = WarmChain(model, readout, steps=2, chained=chained)
        chain.logits(cold)
        return {id(batch): chain.logits(batch) for batch in order}

    forward, backward = warm_logits([first, second]), warm_logits([second, first])
    same = torch.equal(forward[id(second)], backward[id(second)])
    assert same != chained


def test_serialized_certificate_agrees_with_plain_at_fewer_cell_evaluations():
    model = contractive_deq(Picard(max_iter=60, tol=1e-6))
    x = torch.zeros(1, 5)
    plain = Smoothing(sigma=0.3, n0=64, n=2048, batch=256)
    serialized = Smoothing(sigma=0.3, n0=64, n=2048, batch=256,
                           serialized=Serialized(steps=3, checks=128))
    a = certify(model, x, plain, torch.Generator().manual_seed(0))
    b = certify(model, x, serialized, torch.Generator().manual_seed(0))
    assert a.prediction == b.prediction != ABSTAIN
    assert b.bound.checks == 128 and b.bound.disagreements == 0
    assert b.bound.p_lower <= clopper_pearson_lower(b.bound.count, 2048, plain.alpha / 2)
    assert b.cell_evaluations < a.cell_evaluations / 2


def test_cell_evaluations_are_counted_per_draw_and_step():
    """T = max_iter updates plus the final residual per cold solve; K per warm batch row."""
    model = contractive_deq(Picard(max_iter=5, tol=0.0))
    x = torch.zeros(1, 5)
    plain = certify(model, x, Smoothing(sigma=0.3, n0=16, n=64, batch=16),
                    torch.Generator().manual_seed(0))
    assert plain.cell_evaluations == (16 + 64) * (5 + 1)
    serialized = certify(model, x, Smoothing(sigma=0.3, n0=16, n=64, batch=16,
                                             serialized=Serialized(steps=2, checks=8)),
                         torch.Generator().manual_seed(0))
    chain = 16 * (5 + 1) + 64 * 2
    assert chain < serialized.cell_evaluations <= chain + 8 * (5 + 1)


def test_a_lying_chain_cannot_inflate_the_serialized_bound():
    """The chain claims c_A for every draw while f says c_A with p = 0.7: the bound still
    holds with probability >= 1 - alpha, whatever the chain does."""
    n, checks, p_a, alpha, trials = 2000, 300, 0.7, 0.05, 300
    generator = torch.Generator().manual_seed(3)
    failures = 0
    for _ in range(trials):
        f_is_a = torch.rand(n, generator=generator) < p_a
        picks = torch.randint(0, n, (checks,), generator=generator)
        disagreements = int((~f_is_a[picks]).sum())  # h = c_A everywhere
        failures += serialized_bound(n, n, disagreements, checks, alpha).p_lower > p_a
    assert failures <= 2 * alpha * trials
    assert serialized_bound(n, n, 0, checks, alpha).p_lower > 0.95  # honest chain


def test_the_smoothed_attack_does_not_break_certificates_but_breaks_beyond_them():
    model = Linear(W, B).eval()
    settings = Smoothing(sigma=SIGMA, n0=50, n=2000, alpha=0.001, batch=2000)
    generator = torch.Generator().manual_seed(4)
    x = torch.tensor([[0.3, -0.2], [-0.4, 0.1], [0.05, 0.0]])
    certificates = [certify(model, x[i:i + 1], settings, generator) for i in range(3)]
    assert sum(c.radius > 0 for c in certificates) >= 2
    assert broken_certificates(model, x, certificates, settings, bounds=(-10.0, 10.0),
                               generator=generator) == 0
    beyond = smoothed_attack(model, x[:1], torch.tensor([0]), SIGMA,
                             1.5 * exact_radius(x[:1]), bounds=(-10.0, 10.0),
                             generator=generator)
    assert predict(model, beyond, settings, generator) == 1  # the attack is not toothless


def test_the_smoothed_attack_on_a_tiny_deq_respects_certificates():
    model = contractive_deq(Anderson(max_iter=20, tol=1e-5))
    settings = Smoothing(sigma=0.25, n0=32, n=500, alpha=0.01, batch=500)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(3, 5, generator=generator)
    certificates = [certify(model, x[i:i + 1], settings, generator) for i in range(3)]
    assert any(c.radius > 0 for c in certificates)
    assert broken_certificates(model, x, certificates, settings, draws=16, steps=10,
                               bounds=(-5.0, 5.0), generator=generator) == 0


def test_certify_rejects_a_batch_and_serialized_explicit_models():
    model = Linear(W, B).eval()
    with pytest.raises(InputError):
        certify(model, torch.zeros(2, 2), Smoothing(sigma=0.5))
    with pytest.raises(InputError):
        certify(model, torch.zeros(1, 2), Smoothing(sigma=0.5, serialized=Serialized()))


def test_gaussian_noise_objective_trains_on_noisy_inputs():
    model = contractive_deq(Picard(max_iter=30, tol=1e-5)).train()
    x, y = torch.rand(8, 5), torch.arange(8) % 3
    objective = parse_config({"model": {"name": "dense-deq"},
                              "train": {"objective": {"name": "gaussian-noise",
                                                      "sigma": 0.5}}}).train.objective
    assert objective == GaussianNoise(sigma=0.5)
    first = objective.loss(model, x, y, StepRandomness(attack=torch.Generator().manual_seed(0)))
    again = objective.loss(model, x, y, StepRandomness(attack=torch.Generator().manual_seed(0)))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.loss, again.loss)
    assert (first.inputs - x).std() == pytest.approx(0.5, rel=0.3)
    clean = GaussianNoise(sigma=0.0).loss(model, x, y, StepRandomness())
    assert torch.allclose(clean.loss, Standard().loss(model, x, y).loss)


def test_pgd_at_trains_against_an_l2_adversary():
    objective = parse_config({"model": {"name": "dense-deq"},
                              "train": {"objective": {"name": "pgd-at", "attack": {
                                  "norm": "l2", "eps": 0.5, "step_size": 0.2,
                                  "steps": 3}}}}).train.objective
    assert isinstance(objective, PGDAT) and objective.attack == PGD(norm="l2", eps=0.5,
                                                                    step_size=0.2, steps=3)
    model = contractive_deq(Picard(max_iter=30, tol=1e-5)).train()
    x, y = torch.rand(8, 5) * 0.5 + 0.25, torch.arange(8) % 3
    output = objective.loss(model, x, y, StepRandomness(attack=torch.Generator().manual_seed(0)))
    sizes = (output.inputs - x).norm(dim=1)
    assert output.robust and (sizes <= 0.5 + 1e-6).all() and (sizes > 0.25).all()


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("noise-run")
    config = {"data": {"name": "digits", "limit_train": 128},
              "model": {"name": "dense-deq", "width": 16,
                        "solver": {"name": "picard", "max_iter": 20, "tol": 1e-4}},
              "train": {"epochs": 1, "batch_size": 64,
                        "objective": {"name": "gaussian-noise", "sigma": 0.25},
                        "selection": {"metric": "clean", "limit": 32}}}
    train(parse_config(config), run_dir, progress=False)
    return run_dir


def test_smooth_command_writes_json_and_plot(noise_run, tmp_path):
    common = ["--sigma", "0.25", "--n", "200", "--n0", "20", "--batch", "100", "--limit", "3",
              "--alpha", "0.01", "--seed", "7"]
    assert main(["smooth", str(noise_run), *common, "--out", str(tmp_path / "plain")]) == 0
    first = (tmp_path / "plain" / "smoothing.json").read_bytes()
    # no overwritten work: a second run into the same folder needs --force
    assert main(["smooth", str(noise_run), *common, "--quiet", "--sigma", "0.5",
                 "--out", str(tmp_path / "plain")]) == 2
    assert (tmp_path / "plain" / "smoothing.json").read_bytes() == first
    assert main(["smooth", str(noise_run), *common, "--quiet", "--force",
                 "--out", str(tmp_path / "plain")]) == 0
    rerun = json.loads((tmp_path / "plain" / "smoothing.json").read_text())
    assert rerun["records"] == json.loads(first)["records"], "same seed, same certificates"
    assert main(["smooth", str(noise_run), *common, "--serialized", "--warm-steps", "2",
                 "--checks", "50", "--out", str(tmp_path / "srs")]) == 0
    plain = json.loads((tmp_path / "plain" / "smoothing.json").read_text())
    srs = json.loads((tmp_path / "srs" / "smoothing.json").read_text())
    assert plain["settings"]["n"] == 200 and plain["settings"]["n0"] == 20
    assert plain["settings"]["alpha"] == 0.01 and plain["seed"] == 7
    assert srs["settings"]["serialized"] == {"steps": 2, "checks": 50, "chained": False}
    assert plain["samples"] == len(plain["records"]) == 3
    assert plain["certified_accuracy"]["0"] >= plain["certified_accuracy"]["0.5"]
    assert srs["mean_cell_evaluations"] < plain["mean_cell_evaluations"]
    assert all(r["checks"] == 50 for r in srs["records"])
    assert (tmp_path / "plain" / "smoothing.png").stat().st_size > 0
    assert main(["smooth", str(noise_run), "--sigma", "-1", "--limit", "1"]) == 2
    assert main(["smooth", str(noise_run), "--sigma", "1", "--readout", "late"]) == 2


def test_compare_reads_smoothing_certificates_at_a_radius(noise_run, tmp_path, capsys):
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(tmp_path)]) == 0
    path = tmp_path / "smoothing.json"
    written = json.loads(path.read_text())
    for radius in (0.0, 0.25):
        verdicts = read_verdicts(path, Selection(radius=radius))
        assert verdicts.accuracy == pytest.approx(written["certified_accuracy"][f"{radius:g}"])
        assert (verdicts.threat, verdicts.eps) == ("L2", radius)
    assert main(["compare", str(path), str(path), "--radius", "0.25"]) == 0
    assert "L2 radius 0.25" in capsys.readouterr().out
    assert main(["compare", str(path), str(path)]) == 2
    assert "give the l2 radius" in capsys.readouterr().err
    assert main(["compare", str(path), str(path), "--radius", "-1"]) == 2


SMOOTH_OPTIONS = ["--sigma", "0.25", "--n", "200", "--n0", "20", "--batch", "100", "--limit", "4",
                  "--alpha", "0.01", "--seed", "3", "--quiet"]


def test_an_interrupted_certification_resumes_to_the_same_records(noise_run, tmp_path,
                                                                     monkeypatch):
    """Each finished image is kept at once; --resume certifies only the missing ones, and the
    result equals an uninterrupted run's (per-image noise seeds)."""
    import deqshield.smoothing.report as report

    whole_dir = tmp_path / "whole"
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(whole_dir)]) == 0
    whole = json.loads((whole_dir / "smoothing.json").read_text())
    certify = CountedCalls(monkeypatch, report, "certify", stop_after=2)
    out = tmp_path / "cut"
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(out)]) == 130
    assert not (out / "smoothing.json").exists()
    partial = out / "smoothing-records-0.jsonl"
    assert len(partial.read_text().splitlines()) == 3  # the header and two images
    with partial.open("a") as file:
        file.write('{"index": 3, "torn')  # a line cut short by the crash is redone
    certify.stop_after = None
    # partial records are never silently overwritten or ignored
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(out)]) == 2
    other = [*SMOOTH_OPTIONS[:-2], "4", "--quiet"]  # another seed: another job
    assert main(["smooth", str(noise_run), *other, "--resume", "--out", str(out)]) == 2
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--resume", "--out", str(out)]) == 0
    resumed = json.loads((out / "smoothing.json").read_text())
    assert resumed["resumed"] == 2
    assert resumed["records"] == whole["records"]
    assert resumed["certified_accuracy"] == whole["certified_accuracy"]
    assert not list(out.glob("smoothing-records-*"))


def test_a_certification_stopped_before_its_first_image_leaves_nothing_to_resume(
        noise_run, tmp_path, monkeypatch):
    """A run that fails before finishing an image leaves no partial-records file, so the same
    command runs again without --resume or --force."""
    import deqshield.smoothing.report as report

    certify = CountedCalls(monkeypatch, report, "certify", stop_after=0)
    out = tmp_path / "cut"
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(out)]) == 130
    assert not list(out.glob("smoothing-records-*"))
    certify.stop_after = None
    assert main(["smooth", str(noise_run), *SMOOTH_OPTIONS, "--out", str(out)]) == 0


def test_an_image_certificate_does_not_depend_on_the_other_images(noise_run):
    from deqshield.io.runs import load_run
    from deqshield.smoothing import certify_samples

    loaded = load_run(noise_run)
    settings = Smoothing(sigma=0.25, n0=20, n=200, alpha=0.01, batch=100)
    images, labels = loaded.test.images[:3], loaded.test.labels[:3]
    forward = certify_samples(loaded.model, images, labels, settings, seed=5)
    backward = certify_samples(loaded.model, images, labels, settings, seed=5, indices=[2, 0])
    assert backward == [forward[2], forward[0]]


def test_unconverged_draws_are_counted_once_per_image_not_warned_per_batch():
    """Thousands of noisy solves must not print thousands of warnings: each record counts
    the draws f left above the policy's limit, and the summary adds them up."""
    import warnings

    from deqshield.errors import NonConvergenceWarning
    from deqshield.smoothing import certify_samples, summarize

    settings = Smoothing(sigma=1.0, n0=10, n=40, alpha=0.01, batch=20)
    images, labels = torch.randn(2, 5), torch.tensor([0, 1])
    budgeted = contractive_deq(Picard(max_iter=1, tol=1e-9))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = certify_samples(budgeted, images, labels, settings)
    assert not [w for w in caught if issubclass(w.category, NonConvergenceWarning)]
    assert [r["unconverged_draws"] for r in records] == [50, 50]
    assert summarize(records, settings, 0)["unconverged_draws"] == 100
    converged = certify_samples(contractive_deq(Picard(max_iter=80, tol=1e-7)), images,
                                labels, settings)
    assert [r["unconverged_draws"] for r in converged] == [0, 0]
    with pytest.warns(NonConvergenceWarning):  # outside smoothing the policy still warns
        base_predictions(budgeted, settings.readout, images)
