"""Entropy analysis of quantized activations (paper Eq. 1, 12-28; Fig. 2, 3, 5).

A BatchNorm output is modelled as ``z ~ N(0, 1)``.  The polarity quantized
activation (PQA) maps it to the integer

    k = clamp(floor(z * L / lam + 1/2), alpha * L, beta * L)

(the output is ``k * lam / L``; the scale does not change the entropy).  We
compare the *discrete* entropy ``H(k)`` with the *differential* entropy
``H(BN) = 1/2 ln(2 pi e)`` of ``z`` -- exactly as the paper does, although the
two are not the same kind of quantity -- and call ``H(k) / H(BN)`` the
entropy ratio.  All entropies are in nats, and everything here is closed form
(``math.erfc``); ``monte_carlo_pqa_entropy`` exists only to cross-check it.

Regimes of ``lam / L`` (paper appendix, cases 1-3, Fig. 5):

* ``lam / L -> 0``: every ``z < 0`` lands on ``alpha*L`` and every ``z > 0``
  on ``beta*L`` (the k = 0 cell shrinks to nothing), so ``k`` carries only the
  sign of ``z``: ``H -> H_b(Phi(0)) = ln 2`` whatever alpha <= 0 < beta are,
  i.e. ratio -> ln 2 / H(BN) ~= 0.4885.  The limit is taken at fixed L
  (lambda -> 0, so the clip range [alpha*lam, beta*lam] in z shrinks too);
  growing L at fixed lambda instead makes H grow like ln(L / lambda).
* ``lam / L ~ 1``: the ratio depends on alpha, beta; Fig. 2 is this grid and
  ratio ~= 1 marks the "lossless" choices.
* ``lam / L -> inf``: all mass falls into k = 0, ``H -> 0``, ratio -> 0.

Command line::

    python -m pmsm_exp.analysis.entropy --out DIR [--levels 8 --threshold 8]

writes ``entropy_grid.csv/.png``, ``entropy_regimes.csv/.png`` and
``entropy_choice.json`` into DIR and prints the grid.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import numbers
from pathlib import Path

import numpy as np

from pmsm_exp.quant import check_pqa_params

# The paper's Fig. 2/3 grid.
PAPER_ALPHAS = tuple(-0.125 * i for i in range(1, 9))  # -0.125 ... -1
PAPER_BETAS = tuple(0.125 * i for i in range(1, 9))  # 0.125 ... 1
PAPER_LEVELS = 8
PAPER_THRESHOLD = 8.0

# Fig. 5 cases: (name, L, lambda).  L is a multiple of 8 so that every alpha,
# beta of the paper grid gives integer alpha*L, beta*L.
DEFAULT_REGIMES = (
    ("lambda/L << 1", 8, 0.01),  # lambda/L = 0.00125: ~sign only, ratio ~ 0.49-0.52
    ("lambda/L ~ 1", 8, 8.0),  # the paper's setting (Fig. 2)
    ("lambda/L >> 1", 8, 32.0),  # lambda/L = 4: 95% of the mass at k = 0
)



# --------------------------------------------------------------------------
# Reference entropies
# --------------------------------------------------------------------------


def bn_entropy() -> float:
    """Differential entropy of N(0, 1): 1/2 ln(2 pi e) nats (paper Eq. 14)."""
    return 0.5 * math.log(2.0 * math.pi * math.e)


def relu_entropy(convention: str = "mixed") -> float:
    """Entropy of ReLU(z), z ~ N(0, 1), in nats (paper Eq. 18-19).

    The output is a mixture: a point mass 1/2 at 0 plus the density phi(x) on
    x > 0.  Two conventions (checked numerically against the paper's "about
    69% of H(BN)"):

    * ``"mixed"`` -- the standard mixed entropy
      ``-1/2 ln(1/2) - int_0^inf phi ln phi
      = H_b(1/2) + 1/2 H(half-normal) = 3/4 ln 2 + 1/4 ln(pi) + 1/4``
      ~= 1.0562 nats, ratio 0.7444 (default: the one we can derive).  This
      does NOT give the paper's 69%.
    * ``"paper"`` -- ``ln 2 + 1/4 ln(pi)`` ~= 0.9793 nats, ratio
      0.6902, the only simple closed form we found that reproduces the
      paper's 69% (others tried: 1/2 H(BN) -> 0.50; 1/2 ln 2 + 1/2
      H(half-normal) -> 0.50; H_b(1/2) + 1/2 H(half-normal) -> 0.744).  It is
      the exact expression ``1/2 ln 2 + 1/4 ln(2 pi) + 1/4`` with the
      second-moment term ``1/2 E[x^2; x > 0] = 1/4`` replaced by
      ``1/4 ln 2``; the paper's equations were lost in extraction, so this is
      a reconstruction that matches its number, not a derivation we endorse.
    """
    if convention == "paper":
        return math.log(2.0) + 0.25 * math.log(math.pi)
    if convention == "mixed":
        return 0.75 * math.log(2.0) + 0.25 * math.log(math.pi) + 0.25
    raise ValueError(f"convention={convention!r}: must be 'paper' or 'mixed'")


# --------------------------------------------------------------------------
# PQA level distribution
# --------------------------------------------------------------------------


def _check_params(levels, threshold, alpha, beta) -> tuple[int, float, int, int]:
    """Validate and return (L, lambda, alpha*L, beta*L) as clean numbers (L, alpha, beta by the
    quantizer's own check)."""
    for name, value in (("levels", levels), ("alpha", alpha), ("beta", beta), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: must be a finite real number")
    check_pqa_params(levels, alpha, beta)
    if threshold <= 0:
        raise ValueError(f"threshold={threshold!r}: must be > 0")
    L = int(round(levels))
    return L, float(threshold), int(round(alpha * L)), int(round(beta * L))


def _norm_cdf(x: float) -> float:
    """Phi(x), accurate in both tails (erfc, no 1 - small cancellation)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _interval_prob(a: float, b: float) -> float:
    """P(a <= z < b) for z ~ N(0, 1), a <= b; -inf / +inf allowed."""
    if a >= 0.0:  # right half: use survival functions to keep precision
        return _norm_cdf(-a) - _norm_cdf(-b)
    return _norm_cdf(b) - _norm_cdf(a)


def pqa_level_probs(levels, threshold, alpha, beta) -> tuple[np.ndarray, np.ndarray]:
    """Integer levels ``ks = alpha*L .. beta*L`` and their probabilities.

    ``P(k) = Phi((k+1/2) d) - Phi((k-1/2) d)`` with ``d = lambda / L`` inside
    the range; the tails are lumped into the end levels (paper Eq. 20-21).
    """
    L, lam, lo, hi = _check_params(levels, threshold, alpha, beta)
    d = lam / L
    ks = np.arange(lo, hi + 1)
    edges = [-math.inf] + [(k + 0.5) * d for k in range(lo, hi)] + [math.inf]
    probs = np.array([_interval_prob(edges[i], edges[i + 1]) for i in range(len(ks))])
    return ks, probs


def _entropy_of(probs: np.ndarray) -> float:
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def pqa_entropy(levels, threshold, alpha, beta) -> float:
    """Discrete entropy H(k) of the PQA output, in nats (paper Eq. 22)."""
    return _entropy_of(pqa_level_probs(levels, threshold, alpha, beta)[1])


def entropy_ratio(levels, threshold, alpha, beta) -> float:
    """H(PQA) / H(BN): ~1 lossless, < 1 information lost, > 1 added noise."""
    return pqa_entropy(levels, threshold, alpha, beta) / bn_entropy()


def monte_carlo_pqa_entropy(
    levels, threshold, alpha, beta, samples: int = 1_000_000, seed: int = 0
) -> float:
    """Plug-in entropy of sampled PQA levels (cross-check of the closed form)."""
    L, lam, lo, hi = _check_params(levels, threshold, alpha, beta)
    z = np.random.default_rng(seed).standard_normal(int(samples))
    k = np.clip(np.floor(z * L / lam + 0.5), lo, hi)
    _, counts = np.unique(k, return_counts=True)
    return _entropy_of(counts / counts.sum())


# --------------------------------------------------------------------------
# Grid search (Fig. 2/3) and regimes (Fig. 5)
# --------------------------------------------------------------------------


def entropy_grid(levels, threshold, alphas, betas) -> np.ndarray:
    """Ratio grid, shape (len(alphas), len(betas)): ``grid[i, j]`` is the
    entropy ratio at ``alphas[i]``, ``betas[j]``."""
    return np.array([[entropy_ratio(levels, threshold, a, b) for b in betas] for a in alphas])


def choose_alpha_beta(levels, threshold, alphas, betas) -> tuple[float, float, float]:
    """Grid point whose ratio is closest to 1 (entropy-guided choice).

    Ties (|ratio - 1| equal within 1e-12) go to the smaller |alpha| (fewer
    negative levels), then to the larger beta.  Returns (alpha, beta, ratio).
    """
    grid = entropy_grid(levels, threshold, alphas, betas)
    best = None
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            key = (abs(grid[i, j] - 1.0), abs(a), -b)
            if best is None or _key_less(key, best[0]):
                best = (key, float(a), float(b), float(grid[i, j]))
    if best is None:
        raise ValueError("alphas and betas must be non-empty")
    return best[1], best[2], best[3]


def _key_less(key, other, tol: float = 1e-12) -> bool:
    if abs(key[0] - other[0]) > tol:
        return key[0] < other[0]
    return key[1:] < other[1:]


def lambda_regimes(alphas=PAPER_ALPHAS, betas=PAPER_BETAS, settings=DEFAULT_REGIMES) -> list[dict]:
    """Ratio grids for lambda/L << 1, ~ 1 and >> 1 (paper Fig. 5).

    Returns one dict per setting: name, levels, threshold, lambda_over_L,
    alphas, betas, grid (same layout as ``entropy_grid``).
    """
    out = []
    for name, levels, threshold in settings:
        out.append(
            {
                "name": name,
                "levels": int(levels),
                "threshold": float(threshold),
                "lambda_over_L": float(threshold) / levels,
                "alphas": list(alphas),
                "betas": list(betas),
                "grid": entropy_grid(levels, threshold, alphas, betas),
            }
        )
    return out


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------

CSV_FIELDS = ["alpha", "beta", "levels", "threshold", "h_pqa", "h_bn", "ratio"]


def _grid_rows(alphas, betas, grid, levels, threshold):
    h_bn = bn_entropy()
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            r = float(grid[i][j])
            yield [f"{a:g}", f"{b:g}", levels, f"{threshold:g}", f"{r * h_bn:.10g}", f"{h_bn:.10g}", f"{r:.10g}"]


def write_grid_csv(path, alphas, betas, grid, *, levels=PAPER_LEVELS, threshold=PAPER_THRESHOLD) -> Path:
    """Long-format CSV, one row per (alpha, beta): alpha,beta,levels,threshold,
    h_pqa,h_bn,ratio (``h_pqa = ratio * h_bn``)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        w.writerows(_grid_rows(alphas, betas, grid, levels, threshold))
    return path


def write_regimes_csv(path, regimes) -> Path:
    """Like ``write_grid_csv`` for ``lambda_regimes`` output, with a leading
    ``regime`` column."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["regime"] + CSV_FIELDS)
        for r in regimes:
            for row in _grid_rows(r["alphas"], r["betas"], r["grid"], r["levels"], r["threshold"]):
                w.writerow([r["name"]] + row)
    return path


def _ratio_norm(values):
    from matplotlib.colors import TwoSlopeNorm

    v = np.asarray(values, dtype=float)
    return TwoSlopeNorm(vcenter=1.0, vmin=min(float(v.min()), 1 - 1e-3), vmax=max(float(v.max()), 1 + 1e-3))


def _heatmap(ax, alphas, betas, grid, norm, title):
    grid = np.asarray(grid, dtype=float)
    im = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], rotation=45)
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta")
    ax.set_ylabel("alpha")
    ax.set_title(title, fontsize=10)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            dark = abs(norm(grid[i, j]) - 0.5) > 0.35
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    return im


def plot_grid(path, alphas, betas, grid, title="H(PQA)/H(BN)") -> Path:
    """Annotated heatmap PNG of a ratio grid, diverging colours centred at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    im = _heatmap(ax, alphas, betas, grid, _ratio_norm(grid), title)
    fig.colorbar(im, ax=ax, label="entropy ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_regimes(path, regimes) -> Path:
    """Three side-by-side heatmaps (Fig. 5) sharing one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = _ratio_norm(np.concatenate([np.ravel(r["grid"]) for r in regimes]))
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.6 * len(regimes), 5.0), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes[0], regimes):
        title = f"{r['name']}: L={r['levels']}, lambda={r['threshold']:g}"
        im = _heatmap(ax, r["alphas"], r["betas"], r["grid"], norm, title)
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes[0]), label="entropy ratio")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def format_grid(alphas, betas, grid) -> str:
    """Compact text table: rows alpha, columns beta."""
    head = "alpha\\beta " + " ".join(f"{b:>6g}" for b in betas)
    lines = [head]
    for a, row in zip(alphas, grid):
        lines.append(f"{a:>10g} " + " ".join(f"{v:6.3f}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="PQA entropy analysis (paper Fig. 2, 5).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--levels", type=int, default=PAPER_LEVELS)
    p.add_argument("--threshold", type=float, default=PAPER_THRESHOLD)
    p.add_argument("--wandb", action="store_true", help="also log the grids and heatmaps to W&B (offline unless "
                   "WANDB_MODE=online)")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L, lam = args.levels, args.threshold
    alphas, betas = PAPER_ALPHAS, PAPER_BETAS

    grid = entropy_grid(L, lam, alphas, betas)
    write_grid_csv(out / "entropy_grid.csv", alphas, betas, grid, levels=L, threshold=lam)
    plot_grid(out / "entropy_grid.png", alphas, betas, grid, f"H(PQA)/H(BN), L={L}, lambda={lam:g}")

    regimes = lambda_regimes(alphas, betas)
    write_regimes_csv(out / "entropy_regimes.csv", regimes)
    plot_regimes(out / "entropy_regimes.png", regimes)

    alpha, beta, ratio = choose_alpha_beta(L, lam, alphas, betas)
    h_bn = bn_entropy()
    h_qcfs = pqa_entropy(L, lam, 0.0, 1.0)
    choice = {
        "levels": L,
        "threshold": lam,
        "alpha": alpha,
        "beta": beta,
        "ratio": ratio,
        "h_pqa": ratio * h_bn,
        "h_bn": h_bn,
        "h_relu": relu_entropy("mixed"),
        "h_relu_ratio": relu_entropy("mixed") / h_bn,
        "h_relu_paper_reconstruction": relu_entropy("paper"),
        "h_relu_paper_reconstruction_ratio": relu_entropy("paper") / h_bn,
        "h_qcfs": h_qcfs,
        "h_qcfs_ratio": h_qcfs / h_bn,
        "units": "nats",
        "alphas": list(alphas),
        "betas": list(betas),
    }
    (out / "entropy_choice.json").write_text(json.dumps(choice, indent=2) + "\n")

    print(f"H(PQA)/H(BN) at L={L}, lambda={lam:g}  (H(BN) = {h_bn:.4f} nats)")
    print(format_grid(alphas, betas, grid))
    print(f"chosen alpha={alpha:g} beta={beta:g} ratio={ratio:.4f}; "
          f"QCFS ratio={h_qcfs / h_bn:.4f}; ReLU ratio={relu_entropy() / h_bn:.4f}")
    print(f"wrote {out}/entropy_grid.csv, entropy_grid.png, entropy_regimes.csv, "
          "entropy_regimes.png, entropy_choice.json")
    if args.wandb:
        log_to_wandb(out, choice)
    return choice


def log_to_wandb(out: Path, choice: dict) -> None:
    import os
    import wandb
    run = wandb.init(project="pmsm-exp", job_type="entropy", group="entropy", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"), config=choice)
    with open(out / "entropy_grid.csv") as f:
        rows = list(csv.reader(f))
    run.log({"entropy_grid": wandb.Table(columns=rows[0], data=rows[1:]),
             "entropy_grid_png": wandb.Image(str(out / "entropy_grid.png")),
             "entropy_regimes_png": wandb.Image(str(out / "entropy_regimes.png"))})
    run.finish()


if __name__ == "__main__":
    main()
