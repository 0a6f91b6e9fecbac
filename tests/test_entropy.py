"""Entropy analysis (paper Eq. 12-28, Fig. 2/5): closed form vs Monte Carlo,
paper claims, regimes, validation, CLI outputs."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pmsm_exp.analysis import entropy as E

H_BN = 0.5 * math.log(2 * math.pi * math.e)


# 1. closed form ------------------------------------------------------------


def test_bn_entropy_exact():
    assert abs(E.bn_entropy() - H_BN) < 1e-12


@pytest.mark.parametrize(
    "levels,threshold,alpha,beta",
    [(8, 8, -0.25, 1), (8, 8, -1, 1), (4, 4, -0.5, 1), (8, 8, 0, 1),
     (8, 1e-6, -0.25, 1), (8, 1e3, -0.25, 1), (64, 0.1, -1, 0.125)],
)
def test_level_probs_sum_to_one(levels, threshold, alpha, beta):
    ks, p = E.pqa_level_probs(levels, threshold, alpha, beta)
    assert ks[0] == round(alpha * levels) and ks[-1] == round(beta * levels)
    assert np.all(np.diff(ks) == 1)
    assert np.all(p >= 0)
    assert abs(p.sum() - 1) < 1e-12


def test_level_probs_match_formula():
    # Interior: Phi((k+1/2)d) - Phi((k-1/2)d); tails lumped at the ends.
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    L, lam, a, b = 8, 8.0, -0.25, 1.0
    d = lam / L
    ks, p = E.pqa_level_probs(L, lam, a, b)
    assert abs(p[0] - phi((a * L + 0.5) * d)) < 1e-12
    assert abs(p[-1] - (1 - phi((b * L - 0.5) * d))) < 1e-12
    for k, pk in zip(ks[1:-1], p[1:-1]):
        assert abs(pk - (phi((k + 0.5) * d) - phi((k - 0.5) * d))) < 1e-12


@pytest.mark.parametrize(
    "levels,threshold,alpha,beta",
    [(8, 8, -0.25, 1), (8, 8, -1, 1), (4, 4, -0.5, 1), (4, 2, -0.25, 0.5), (8, 8, 0, 1)],
)
def test_closed_form_matches_monte_carlo(levels, threshold, alpha, beta):
    exact = E.pqa_entropy(levels, threshold, alpha, beta)
    mc = E.monte_carlo_pqa_entropy(levels, threshold, alpha, beta, samples=1_000_000, seed=1)
    assert abs(exact - mc) < 1e-2, (exact, mc)


# 2. paper claims -------------------------------------------------------------


def test_paper_default_ratio_near_one():
    r = E.entropy_ratio(8, 8, -0.25, 1)
    assert r == pytest.approx(1.01293, abs=1e-4)  # observed 1.012929
    assert abs(r - 1) < 0.02


def test_qcfs_ratio_clearly_below():
    r = E.entropy_ratio(8, 8, 0, 1)
    assert r == pytest.approx(0.56437, abs=1e-4)  # observed 0.564368
    assert r < 0.6
    assert r < E.relu_entropy() / H_BN  # below the ReLU "upper bound" too


def test_relu_ratio():
    # Independent reference: ReLU(z), z ~ N(0,1), is a point mass 1/2 at 0 plus phi on x > 0, so its
    # mixed entropy is -1/2 ln(1/2) - int_0^inf phi ln phi dx; integrate that numerically here.
    x = np.linspace(0.0, 30.0, 300_001)  # phi(30) ~ 1e-196: the tail beyond is nothing
    phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    integrand = -phi * np.log(phi)
    mixed = 0.5 * math.log(2) + float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(x)))
    assert E.relu_entropy() == pytest.approx(mixed, abs=1e-9)
    assert E.relu_entropy() / H_BN == pytest.approx(mixed / H_BN, abs=1e-9)
    # The "paper" convention is the same integral with its second-moment part 1/2 E[x^2; x > 0]
    # weighted by ln 2 instead of 1 (the documented reconstruction of the paper's 69%):
    second_moment = float(np.sum(((x * x * phi / 2)[1:] + (x * x * phi / 2)[:-1]) / 2 * np.diff(x)))
    paper = mixed - second_moment + math.log(2) * second_moment
    assert second_moment == pytest.approx(0.25, abs=1e-9)
    assert E.relu_entropy("paper") == pytest.approx(paper, abs=1e-9)
    assert round(100 * paper / H_BN) == 69  # the paper: "about 69% of H(BN)"
    with pytest.raises(ValueError, match="bogus"):
        E.relu_entropy("bogus")


def test_grid_shape_and_choice():
    grid = E.entropy_grid(8, 8, E.PAPER_ALPHAS, E.PAPER_BETAS)
    assert grid.shape == (8, 8)
    assert grid[1, 7] == pytest.approx(E.entropy_ratio(8, 8, -0.25, 1))
    a, b, r = E.choose_alpha_beta(8, 8, E.PAPER_ALPHAS, E.PAPER_BETAS)
    assert abs(r - 1) == pytest.approx(np.abs(grid - 1).min())
    assert (a, b) == (-0.25, 0.25)
    # Widening the negative range cannot lose entropy (more levels, finer split).
    assert np.all(np.diff(grid, axis=0) >= -1e-12)
    assert np.all(np.diff(grid, axis=1) >= -1e-12)


def test_choice_tie_break_is_deterministic():
    # lambda/L huge: every grid point has the same ratio (~1e-222), so the
    # tie-break decides: smallest |alpha|, then largest beta.
    a, b, _ = E.choose_alpha_beta(8, 512, E.PAPER_ALPHAS, E.PAPER_BETAS)
    assert (a, b) == (-0.125, 1.0)


# 3. regimes --------------------------------------------------------------------


def test_ratio_vanishes_for_large_lambda_over_L():
    ratios = [E.entropy_ratio(8, lam, -0.25, 1) for lam in (8, 16, 32, 64, 128)]
    assert all(x > y for x, y in zip(ratios, ratios[1:]))
    assert ratios[-1] < 1e-3
    ks, p = E.pqa_level_probs(8, 1e3, -0.25, 1)
    assert p[ks == 0][0] > 1 - 1e-12


@pytest.mark.parametrize("alpha,beta", [(-0.25, 1), (-1, 0.125), (-0.5, 0.5), (0, 1)])
def test_small_lambda_over_L_tends_to_sign_entropy(alpha, beta):
    hs = [E.pqa_entropy(8, lam, alpha, beta) for lam in (1e-2, 1e-4, 1e-6)]
    errs = [abs(h - math.log(2)) for h in hs]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4
    ks, p = E.pqa_level_probs(8, 1e-6, alpha, beta)
    assert p[0] == pytest.approx(0.5, abs=1e-5) and p[-1] == pytest.approx(0.5, abs=1e-5)


def test_lambda_regimes_structure():
    regimes = E.lambda_regimes()
    assert len(regimes) == 3
    small, mid, large = (r["grid"] for r in regimes)
    assert regimes[0]["lambda_over_L"] < 0.1 < 10 > regimes[2]["lambda_over_L"] > 1
    assert np.all(np.abs(small - math.log(2) / H_BN) < 0.05)
    assert np.all(large < 0.2)
    assert np.abs(mid - 1).min() < 0.01


# 4. validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(levels=0), "levels=0"),
        (dict(levels=2.5), "levels=2.5"),
        (dict(levels=-8), "levels=-8"),
        (dict(threshold=0.0), "threshold=0.0"),
        (dict(threshold=float("nan")), "threshold=nan"),
        (dict(alpha=0.25), "alpha=0.25"),
        (dict(beta=0.0), "beta=0.0"),
        (dict(beta=-0.5), "beta=-0.5"),
        (dict(alpha=-0.3), "alpha=-0.3"),
        (dict(beta=0.3), "beta=0.3"),
        (dict(levels=3, alpha=-0.25), "alpha*levels"),
    ],
)
def test_invalid_parameters(kwargs, needle):
    args = dict(levels=8, threshold=8.0, alpha=-0.25, beta=1.0) | kwargs
    for fn in (E.pqa_level_probs, E.pqa_entropy, E.entropy_ratio, E.monte_carlo_pqa_entropy):
        with pytest.raises(ValueError) as exc:
            fn(**args)
        assert needle in str(exc.value)


def test_integer_tolerance():
    # 1e-9 tolerance on alpha*L, beta*L: float noise is accepted.
    E.pqa_entropy(8, 8, -0.25 + 1e-12, 1 - 1e-12)
    with pytest.raises(ValueError):
        E.pqa_entropy(8, 8, -0.25 + 1e-6, 1)


# 5. CLI -------------------------------------------------------------------------------


def test_cli_writes_all_outputs(tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "ent"
    proc = subprocess.run(
        [sys.executable, "-m", "pmsm_exp.analysis.entropy", "--out", str(out),
         "--levels", "8", "--threshold", "8"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "alpha\\beta" in proc.stdout and "1.013" in proc.stdout

    names = ["entropy_grid.csv", "entropy_grid.png", "entropy_regimes.csv",
             "entropy_regimes.png", "entropy_choice.json"]
    for name in names:
        assert (out / name).stat().st_size > 0, name

    for png in ("entropy_grid.png", "entropy_regimes.png"):
        img = imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0.01  # not a blank canvas

    with open(out / "entropy_grid.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64
    assert set(rows[0]) == {"alpha", "beta", "levels", "threshold", "h_pqa", "h_bn", "ratio"}
    row = next(r for r in rows if float(r["alpha"]) == -0.25 and float(r["beta"]) == 1)
    assert float(row["ratio"]) == pytest.approx(E.entropy_ratio(8, 8, -0.25, 1), rel=1e-8)
    assert float(row["h_pqa"]) == pytest.approx(E.pqa_entropy(8, 8, -0.25, 1), rel=1e-8)

    with open(out / "entropy_regimes.csv") as f:
        rrows = list(csv.DictReader(f))
    assert len(rrows) == 3 * 64 and "regime" in rrows[0]

    choice = json.loads((out / "entropy_choice.json").read_text())
    assert choice["alpha"] in E.PAPER_ALPHAS and choice["beta"] in E.PAPER_BETAS
    assert choice["ratio"] == pytest.approx(E.entropy_ratio(8, 8, choice["alpha"], choice["beta"]))
    assert choice["h_bn"] == pytest.approx(H_BN)
    assert choice["h_relu"] / H_BN == pytest.approx(0.7444, abs=1e-3)
    assert choice["h_relu_paper_reconstruction_ratio"] == pytest.approx(0.69, abs=0.005)
    assert choice["h_qcfs"] == pytest.approx(E.pqa_entropy(8, 8, 0, 1))


def test_cli_logs_to_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    E.main(["--out", str(tmp_path), "--wandb"])
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
