"""The paper in miniature, rebuilt from a campaign's records: every table and figure, and the claims ledger.

    python -m pmsm_exp.runs.campaign --runs results/runs/paper-cpu --out results --budget cpu

Reads only the metrics.json files under --runs (sweeps/paper.sh publishes them there) and the closed-form
entropy analysis; writes into --out:

    table1_cifar10.{md,csv}   Table 1: ResNet-20 and VGG-16 (PMSM, QCFS at PMSM's L, QCFS at its own L,
                              the entropy-guided alpha/beta), SNN accuracy over T beside the paper's figures
    table1_cifar100.md        Table 1's CIFAR-100 columns (a note where no run could be made)
    table2_vit.{md,csv}       Table 2: the ViT, PMSM (AIF) and the ST-BIF+ (SpikeZIP-TF) baseline over T
    table3_energy.{md,csv}    Table 3: VGG-16 spikes and Eq. 11 power at T=1, 2; energy at equal accuracy
    fig2_entropy.png          Fig. 2: H(PQA)/H(BN) over alpha x beta (L=8, lambda=8), closed form
    fig3a_alpha.{png,md,csv}  Fig. 3(a)/(b): accuracy over alpha (beta=1) and over beta (alpha=-0.25),
    fig3b_beta.{png,md,csv}   mean and spread over seeds
    fig4_layer_spikes.png     Fig. 4: spikes per image per layer at T=1, PMSM beside QCFS
    fig5_regimes.png          Fig. 5: the entropy ratio in the three lambda/L regimes, closed form
    fig6_conversion_error.png Fig. 6: conversion error per layer over T (PMSM beside QCFS)
    crosscheck_spikingjelly.md our IF conversion of the Table 1 ResNet-20 QCFS weights beside spikingjelly's
                              (runs/crosscheck.json, written by benchmarks/crosscheck_spikingjelly.py)
    CLAIMS.md                 one row per claim of the paper: verdict, our figure beside the paper's, the file
    campaign.md               the steps' wall times (steps.tsv, written by sweeps/paper.sh) and the scale
    summary.md                README's Results summary: time to accuracy, the claims ledger, Table 1;
                              --readme README.md also writes it between README's campaign:summary markers

Verdicts are computed from the records by the rules written beside each claim (holds, fails, partly,
untested); nothing is typed in by hand. Accuracies in the records are fractions; these files show percent.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from pmsm_exp.analysis import entropy
from pmsm_exp.runs import crosscheck, report

TIMESTEPS = [1, 2, 4, 8, 16, 32, 64]
TABLE1 = ["table1_resnet20_cifar10", "table1_vgg16_cifar10", "qcfs_own_levels", "entropy_guided"]
TABLE1_CIFAR100 = ["table1_resnet20_cifar100", "table1_vgg16_cifar100"]
TABLE2 = ["vit_tiny_cifar10", "table2_vit_s_cifar10", "table2_vit_s_cifar100", "table2_vit_s_imagenet"]
ABLATIONS = {"fig3a_alpha": ("ablation_alpha", "alpha"), "fig3b_beta": ("ablation_beta", "beta")}
CNNS = ("resnet20", "vgg16")
VERDICTS = ("holds", "fails", "partly", "untested")
SMOKE = ("**BUDGET=smoke: one epoch on a few hundred images, CIFAR-100 and ImageNet on stand-in files of random "
         "pixels. These numbers test the pipeline, not the method.**")
STABLE_PT = 0.5      # "stable over T": the SNN at T=8 at most this many points under T=1
VIT_LOSS_PT = 1.0    # "a small loss at T=1": at most this many points
ENTROPY_TOL = 0.05   # "lossless transmission": |H(PQA)/H(BN) - 1| within this


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


# ---------------------------------------------------------------- records
@dataclass
class Records:
    runs: list[report.Run]

    def where(self, experiments=None, task=None, method=None, model=None) -> list[report.Run]:
        return [r for r in self.runs
                if (experiments is None or r.record.get("experiment") in experiments)
                and (task is None or r.record.get("task") == task)
                and (method is None or r.record.get("method") == method)
                and (model is None or r.record.get("model") == model)]


def snn_at(m: dict, key: str, t: int):
    snn = m.get("snn") or {}
    ts = snn.get("timesteps") or []
    return snn[key][ts.index(t)] if t in ts and key in snn else None


# ---------------------------------------------------------------- tables
def accuracy_table(runs: Path, out: Path, name: str, experiments: list[str], missing: str) -> list[dict]:
    sel = report.collect(runs, experiments)
    groups = report.group_runs(sel)
    if not groups:
        (out / f"{name}.md").write_text(f"not run: {missing}\n")
        return []
    rows = report.build_table("accuracy", groups, TIMESTEPS)
    text = report.render("accuracy", rows, sel, groups, TIMESTEPS)
    text += ("\n\nRows whose settings show data.test_subset=N were simulated on the first N test images "
             "(T beyond 8 on the whole test set would take hours here).")
    report.write("accuracy", rows, sel, text, out, name)
    return rows


def energy_table(runs: Path, out: Path) -> list[dict]:
    sel = report.collect(runs, ["table1_vgg16_cifar10"])
    groups = [g for g in report.group_runs(sel) if g.settings.get("task") == "train"]
    if not groups:
        (out / "table3_energy.md").write_text("not run yet: Table 3 comes from the Table 1 VGG-16 pair "
                                              "(sweeps/paper.sh step table1_vgg16)\n")
        return []
    rows = report.build_table("energy", groups, [1, 2])
    text = energy_wide(rows) + "\n\n" + report.render("energy", rows, sel, groups).split("\n\n", 1)[1]
    equal = report.equal_energy(groups)
    if equal:
        text += "\n\nAt equal T and at equal accuracy (the first T at which QCFS reaches PMSM's T=1 accuracy):\n\n"
        text += report.render_energy(equal)
    report.write("energy", rows, sel, text, out, "table3_energy")
    return rows


ENERGY_COLUMNS = {"snn_acc": "SNN acc", "spikes_e5": "spikes (1e5/img)", "power_mw": "power mW",
                  "power_ratio": "QCFS power / power"}


def energy_wide(rows: list[dict]) -> str:
    """Table 3's shape: one row per method and T, ours [the paper's figure] in each cell."""
    def cell(r):
        ours = "-" if r["ours"] is None else (f"{100 * r['ours']:.2f}" if r["metric"].endswith("acc")
                                               else f"{r['ours']:.4g}")
        paper = "" if r["paper"] is None else (f" [{100 * r['paper']:.2f}]" if r["metric"].endswith("acc")
                                                else f" [{r['paper']:.4g}]")
        return ours + paper
    table: dict[tuple, dict] = {}
    ann = {(r["model"], r["method"]): cell(r) for r in rows if r["metric"] == "ann_acc"}
    for r in rows:
        if r["metric"] in ENERGY_COLUMNS:
            row = table.setdefault((r["model"], r["method"], r["T"]), {
                "model": r["model"], "method": r["method"], "ANN": ann.get((r["model"], r["method"]), "-"),
                "T": r["T"], **{c: "-" for c in ENERGY_COLUMNS.values()}})
            row[ENERGY_COLUMNS[r["metric"]]] = cell(r)
    return report.markdown(list(table.values())) + (
        "\n\ncells: ours [the paper's Table 3]; spikes per image summed over steps 1..T (an AIF output s counts "
        "|s|), power by Eq. 11 (N · 0.9 pJ / (T · 1 ms)), accuracies in percent; the last column > 1 means the "
        "method spends less than QCFS at the same T.")


# ---------------------------------------------------------------- figures
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def entropy_figures(out: Path) -> dict:
    grid = entropy.entropy_grid(entropy.PAPER_LEVELS, entropy.PAPER_THRESHOLD, entropy.PAPER_ALPHAS, entropy.PAPER_BETAS)
    entropy.plot_grid(out / "fig2_entropy.png", entropy.PAPER_ALPHAS, entropy.PAPER_BETAS, grid,
                      f"Fig. 2: H(PQA)/H(BN), L={entropy.PAPER_LEVELS}, lambda={entropy.PAPER_THRESHOLD:g}")
    entropy.plot_regimes(out / "fig5_regimes.png", entropy.lambda_regimes())
    return {"grid": grid}


def ablation_points(records: Records, experiment: str, param: str) -> dict[float, list[float]]:
    """SNN accuracy at T=1 per parameter value, one value per seed (the newest run of a seed)."""
    points: dict[float, dict[int, tuple[float, float]]] = {}
    for r in records.where([experiment], task="train", method="pmsm"):
        acc = snn_at(r.metrics, "test_acc", 1)
        if acc is not None:
            seeds = points.setdefault(float(r.record["pqa"][param]), {})
            seed = r.record.get("seed")
            if seed not in seeds or seeds[seed][0] < r.time:
                seeds[seed] = (r.time, acc)
    return {v: [acc for _, acc in seeds.values()] for v, seeds in sorted(points.items())}


def ablation_figure(runs: Path, records: Records, out: Path, name: str, experiment: str, param: str) -> dict:
    points = ablation_points(records, experiment, param)
    sel = report.collect(runs, [experiment])
    groups = report.group_runs(sel)
    if groups:
        rows = report.build_table("ablation", groups, [1], param)
        report.write("ablation", rows, sel, report.render("ablation", rows, sel, groups, [1], param), out, name)
    else:
        (out / f"{name}.md").write_text(f"not run yet ({experiment})\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if points:
        xs = list(points)
        means = [100 * statistics.fmean(v) for v in points.values()]
        spread = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for v in points.values()]
        ax.errorbar(xs, means, yerr=spread, marker="o", capsize=3, label="PMSM, SNN at T=1 (= QANN)")
        for x, v in points.items():
            ax.scatter([x] * len(v), [100 * a for a in v], s=8, color="gray", zorder=3)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
    if param == "alpha":
        ax.invert_xaxis()   # as the paper: from -0.125 down to -1
    ax.set_xlabel(param)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{name}: mean ± std over seeds (dots: each seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return points


def layer_spikes_at(m: dict, t: int) -> dict[str, float]:
    """Spikes per image per layer over steps 1..t (the records hold running totals)."""
    layers = (m.get("snn") or {}).get("layer_spikes") or {}
    ts = (m.get("snn") or {}).get("timesteps") or []
    return {n: v[ts.index(t)] for n, v in layers.items()} if t in ts else {}


def pair(records: Records, experiment: str) -> tuple[dict | None, dict | None]:
    """The newest finished PMSM and QCFS training records of an experiment."""
    def newest(method):
        found = records.where([experiment], task="train", method=method)
        return max(found, key=lambda r: (r.time, r.rel)).metrics if found else None
    return newest("pmsm"), newest("qcfs")


def spikes_figure(records: Records, out: Path) -> dict:
    plt = _pyplot()
    shown = {}
    for experiment in ("table1_vgg16_cifar10", "table1_resnet20_cifar10"):
        pmsm, qcfs = pair(records, experiment)
        if pmsm and qcfs:
            shown = {"experiment": experiment, "PMSM": layer_spikes_at(pmsm, 1), "QCFS": layer_spikes_at(qcfs, 1)}
            break
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if shown:
        names = list(shown["PMSM"])
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [shown["PMSM"][n] for n in names], width=0.4, label="PMSM")
        ax.bar([i + 0.2 for i in x], [shown["QCFS"].get(n, 0) for n in names], width=0.4, label="QCFS")
        ax.set_xticks(list(x), names, rotation=90, fontsize=6)
        ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"Fig. 4: spikes per image per layer at T=1 ({shown['experiment']})", fontsize=9)
    else:
        ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
    ax.set_ylabel("spikes per image (|s|)")
    fig.tight_layout()
    fig.savefig(out / "fig4_layer_spikes.png", dpi=120)
    plt.close(fig)
    return shown


def conversion_error_figure(records: Records, out: Path) -> dict:
    plt = _pyplot()
    pmsm, qcfs = pair(records, "table1_resnet20_cifar10")
    shown = {label: m["analysis"] for label, m in (("PMSM", pmsm), ("QCFS", qcfs)) if m and m.get("analysis")}
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(5 * max(len(shown), 1), 3.5), squeeze=False)
    for ax, (label, a) in zip(axes[0], shown.items()):
        ts = list(range(1, a["timesteps"] + 1))
        for name, layer in a["layers"].items():
            if layer.get("conversion_error") is not None:
                ax.plot(ts, layer["conversion_error"], color="gray", lw=0.6, alpha=0.6)
        ax.plot(ts, a["conversion_error_mean"], color="black", lw=2, label="mean over layers")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T")
        ax.set_ylabel("conversion error")
        ax.set_title(f"Fig. 6: {label} (ResNet-20), per layer", fontsize=9)
        ax.legend(fontsize=8)
    if not shown:
        axes[0][0].text(0.5, 0.5, "not run yet", ha="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    fig.savefig(out / "fig6_conversion_error.png", dpi=120)
    plt.close(fig)
    return shown


# ---------------------------------------------------------------- the claims ledger
@dataclass
class Claim:
    claim: str
    paper: str
    ours: str
    verdict: str
    evidence: str
    scale: str


def budget_of(run: report.Run) -> str:
    return ((run.metrics.get("config") or {}).get("budget") or {}).get("name", "paper")


def scale_of(runs: list[report.Run]) -> str:
    """What the runs behind a verdict were: epochs, training and test images, budget."""
    if not runs:
        return "-"
    parts = set()
    for r in runs:
        m = r.metrics
        data, training = m.get("data") or {}, m.get("training") or {}
        budget = budget_of(r)
        parts.add(f"{r.record.get('model')} {training.get('epochs', '?')} ep, {data.get('train_images', '?')} train / "
                  f"{data.get('test_images', '?')} test images ({data.get('name', '?')}), budget {budget}")
    return "; ".join(sorted(parts))


def paper_figure(table: str, model: str, method: str, metric: str, t: int | None, data: str = "cifar10"):
    for p in report.paper_results():
        if (p.table == table and p.model == model and p.method == method and p.metric == metric
                and p.data == data and (p.T == "" if t is None else p.T == str(t))):
            return p.value
    return None


def lossless_claim(records: Records) -> Claim:
    runs = [r for r in records.where(task="train", method="pmsm") if r.record.get("model") in CNNS
            and snn_at(r.metrics, "agreement", 1) is not None]
    exact = [r for r in runs if snn_at(r.metrics, "agreement", 1) == 1.0
             and snn_at(r.metrics, "test_acc", 1) == (r.metrics.get("qann") or {}).get("test_acc")]
    verdict = "untested" if not runs else "holds" if len(exact) == len(runs) else "fails"
    images = sorted({(r.metrics.get("data") or {}).get("test_images") for r in runs} - {None})
    return Claim("CNNs: the SNN at T=1 equals the quantized ANN (lossless at T=1)",
                 "T=1 = ANN in every Table 1 row (e.g. ResNet-20 93.78 / 93.78)",
                 f"{len(exact)} of {len(runs)} PMSM CNN runs agree with their QANN on every test image at T=1 "
                 f"({', '.join(map(str, images)) or '-'} images)", verdict,
                 "table1_cifar10.md, fig3a_alpha.md, fig3b_beta.md (snn.agreement in each record)", scale_of(runs))


def stable_claim(records: Records) -> Claim:
    found, worst = [], None
    for model in CNNS:
        pmsm, _ = pair(records, f"table1_{model}_cifar10")
        if pmsm and snn_at(pmsm, "test_acc", 8) is not None:
            change = snn_at(pmsm, "test_acc", 8) - snn_at(pmsm, "test_acc", 1)
            found.append(f"{model} {pct(snn_at(pmsm, 'test_acc', 1))} → {pct(snn_at(pmsm, 'test_acc', 8))}")
            worst = change if worst is None else min(worst, change)
    verdict = "untested" if worst is None else "holds" if worst >= -STABLE_PT / 100 else "fails"
    runs = [r for m in CNNS for r in records.where([f"table1_{m}_cifar10"], task="train", method="pmsm")]
    return Claim(f"PMSM accuracy stays stable from T=1 to T=8 (at most {STABLE_PT} points lower)",
                 "ResNet-20 93.78 → 93.75, VGG-16 95.67 → 95.62", "; ".join(found) or "-", verdict,
                 "table1_cifar10.md", scale_of(runs))


def vit_stable_claim(records: Records) -> Claim:
    """The abstract's "stable performance across multiple timesteps", tested on the ViT runs (the CNN row
    above uses Table 1's figures; the paper gives no ViT accuracy beyond T=1)."""
    runs = [r for r in records.where(TABLE2, task="train", method="pmsm") if snn_at(r.metrics, "test_acc", 8) is not None]
    changes = [snn_at(r.metrics, "test_acc", 8) - snn_at(r.metrics, "test_acc", 1) for r in runs]
    verdict = ("untested" if not runs else "holds" if min(changes) >= -STABLE_PT / 100 else "fails")
    ours = "; ".join(f"{r.record['model']} {r.record['data']}: " + " → ".join(
        f"T={t} {pct(snn_at(r.metrics, 'test_acc', t))}" for t in TIMESTEPS if snn_at(r.metrics, "test_acc", t) is not None)
        for r in runs) or "no ViT run yet"
    return Claim(f"ViT: PMSM accuracy stays stable from T=1 to T=8 (at most {STABLE_PT} points lower)",
                 "abstract: stable performance across timesteps (no ViT figure beyond T=1)", ours, verdict,
                 "table2_vit.md", scale_of(runs))


def beats_qcfs_claim(records: Records) -> Claim:
    found, wins = [], []
    for model in CNNS:
        pmsm, qcfs = pair(records, f"table1_{model}_cifar10")
        if pmsm and qcfs:
            a, b = snn_at(pmsm, "test_acc", 1), snn_at(qcfs, "test_acc", 1)
            found.append(f"{model}: PMSM {pct(a)} vs QCFS {pct(b)}")
            wins.append(a > b)
    verdict = "untested" if not wins else "holds" if all(wins) else "partly" if any(wins) else "fails"
    runs = [r for m in CNNS for r in records.where([f"table1_{m}_cifar10"], task="train")]
    return Claim("PMSM beats QCFS at T=1 (same L, same recipe)",
                 "ResNet-20 93.78 vs 62.43; VGG-16 95.67 vs 88.41", "; ".join(found) or "-", verdict,
                 "table1_cifar10.md", scale_of(runs))


def entropy_phases_claim(grid) -> Claim:
    column = [float(grid[i][-1]) for i in range(len(entropy.PAPER_ALPHAS))]   # beta = 1, alpha -0.125 .. -1
    lossy, noisy = column[0] < 1 - ENTROPY_TOL, column[-1] > 1 + ENTROPY_TOL
    lossless = any(abs(v - 1) <= ENTROPY_TOL for v in column)
    rising = all(b >= a for a, b in zip(column, column[1:]))
    verdict = "holds" if lossy and lossless and noisy and rising else "partly" if lossless else "fails"
    return Claim("The entropy ratio H(PQA)/H(BN) over alpha (beta=1) has three phases: loss (<1), lossless (≈1), "
                 f"noise (>1) as alpha goes from -0.125 to -1 (≈1: within {ENTROPY_TOL})",
                 "Fig. 2 (no values in the text)",
                 "ratio " + ", ".join(f"{a:g}: {v:.3f}" for a, v in zip(entropy.PAPER_ALPHAS, column)),
                 verdict, "fig2_entropy.png (closed form, L=8, lambda=8)", "closed form (no training)")


def rise_then_drop_claim(points: dict[float, list[float]], param: str, figure: str, runs) -> Claim:
    order = sorted(points, reverse=(param == "alpha"))    # the paper's direction: alpha -0.125 → -1, beta 0.125 → 1
    means = [statistics.fmean(points[v]) for v in order]
    spread = max((statistics.stdev(points[v]) for v in order if len(points[v]) > 1), default=0.0)
    if len(order) < 3:
        verdict, ours = "untested", f"{len(order)} point(s)"
    else:
        peak = max(range(len(means)), key=means.__getitem__)
        interior = 0 < peak < len(means) - 1
        margin = means[peak] - max(means[0], means[-1])
        verdict = "holds" if interior and margin > spread else "partly" if interior else "fails"
        ours = (", ".join(f"{v:g}: {pct(m)}" for v, m in zip(order, means))
                + f"; peak at {order[peak]:g}, {100 * margin:.2f} points over the better end, seed spread "
                  f"up to {100 * spread:.2f}")
    return Claim(f"Accuracy over {param} first rises, then drops (a peak inside the range, above both ends by more "
                 "than the spread over seeds)", f"{figure} (no values in the text)", ours, verdict,
                 f"{'fig3a_alpha' if param == 'alpha' else 'fig3b_beta'}.png/.md", scale_of(runs))


def energy_claim(records: Records) -> tuple[Claim, Claim]:
    def ratios(experiment):
        pmsm, qcfs = pair(records, experiment)
        if not (pmsm and qcfs):
            return None
        power = {t: (snn_at(qcfs, "power_mw", t), snn_at(pmsm, "power_mw", t)) for t in (1, 2)}
        layers = (layer_spikes_at(pmsm, 1), layer_spikes_at(qcfs, 1))
        return power, layers
    vgg, resnet = ratios("table1_vgg16_cifar10"), ratios("table1_resnet20_cifar10")
    context = ""
    if resnet:
        (p1q, p1p) = resnet[0][1]
        fewer = sum(resnet[1][0][n] < resnet[1][1].get(n, 0) for n in resnet[1][0])
        context = (f" ResNet-20 (context, not the paper's model): QCFS/PMSM power {p1q / p1p:.2f}x at T=1; "
                   f"PMSM fewer spikes in {fewer} of {len(resnet[1][0])} layers.") if p1p else ""
    runs = records.where(["table1_vgg16_cifar10"], task="train")
    if not vgg:
        return (Claim("At equal T, PMSM spends over 5x less energy than QCFS (Eq. 11 power, VGG-16)",
                      "Table 3: over 5x at T=1 and T=2", "VGG-16 pair not run yet." + context, "untested",
                      "table3_energy.md", "-"),
                Claim("PMSM fires fewer spikes than QCFS in every layer (T=1, VGG-16)", "Fig. 4",
                      "VGG-16 pair not run yet." + context, "untested", "fig4_layer_spikes.png", "-"))
    power, (mine, theirs) = vgg
    rs = [q / p for q, p in power.values() if q is not None and p]
    verdict = "untested" if not rs else "holds" if min(rs) > 5 else "partly" if min(rs) > 1 else "fails"
    fewer = sum(mine[n] < theirs.get(n, 0) for n in mine)
    layer_verdict = ("untested" if not mine else "holds" if fewer == len(mine) else "partly" if fewer else "fails")
    return (Claim("At equal T, PMSM spends over 5x less energy than QCFS (Eq. 11 power, VGG-16)",
                  "Table 3: over 5x at T=1 and T=2",
                  "QCFS/PMSM power " + ", ".join(f"T={t}: {q / p:.2f}x" for t, (q, p) in power.items() if q and p)
                  + "." + context, verdict, "table3_energy.md", scale_of(runs)),
            Claim("PMSM fires fewer spikes than QCFS in every layer (T=1, VGG-16)", "Fig. 4",
                  f"fewer in {fewer} of {len(mine)} layers." + context, layer_verdict, "fig4_layer_spikes.png",
                  scale_of(runs)))


def vit_claims(records: Records) -> tuple[Claim, Claim]:
    runs = [r for r in records.where(TABLE2, task="train", method="pmsm") if snn_at(r.metrics, "test_acc", 1) is not None]
    losses = [(r, (r.metrics["qann"]["test_acc"] - snn_at(r.metrics, "test_acc", 1))) for r in runs]
    if losses:
        worst = max(loss for _, loss in losses)
        verdict = "holds" if 0 <= worst <= VIT_LOSS_PT / 100 else "partly" if worst <= 2 * VIT_LOSS_PT / 100 else "fails"
        ours = "; ".join(f"{r.record['model']} {r.record['data']}: QANN {pct(r.metrics['qann']['test_acc'])}, T=1 "
                         f"{pct(snn_at(r.metrics, 'test_acc', 1))} (agreement {pct(snn_at(r.metrics, 'agreement', 1))}%)"
                         for r, _ in losses)
        if all(loss == 0 and snn_at(r.metrics, "agreement", 1) == 1.0 for r, loss in losses):
            ours += (". No loss: at step 1 the spiking ViT performs the quantized ViT's own float operations "
                     "(LayerNorm and softmax on their first input, each product of two spike trains one matmul: "
                     "snn/spiking_vit.py), so the paper's small loss does not appear")
    else:
        verdict, ours = "untested", "no ViT run yet"
    small = Claim(f"ViT: a small loss at T=1 (at most {VIT_LOSS_PT} point under the QANN)",
                  "ViT-S CIFAR-10: QANN 98.8, T=1 98.5", ours, verdict, "table2_vit.md", scale_of(runs))
    real = [r for r in records.where(["table2_vit_s_cifar10", "table2_vit_s_cifar100", "table2_vit_s_imagenet"],
                                     task="train", method="pmsm") if budget_of(r) == "paper"]   # smoke: stand-ins
    headline = Claim("Headline ViT-S accuracies at T=1: 98.5 (CIFAR-10), 89.3 (CIFAR-100), 81.6 (ImageNet)",
                     "abstract, Table 2", "not run: no pretrained ViT-S weights, CIFAR-100 or ImageNet on this "
                     "machine (BUDGET=paper runs them)" if not real else "see table2_vit.md",
                     "untested" if not real else "partly", "table2_vit.md", scale_of(real))
    return small, headline


def entropy_rule_claim(records: Records) -> Claim:
    alpha, beta, ratio = entropy.choose_alpha_beta(entropy.PAPER_LEVELS, entropy.PAPER_THRESHOLD,
                                                   entropy.PAPER_ALPHAS, entropy.PAPER_BETAS)
    verdict = "holds" if (alpha, beta) == (-0.25, 1.0) else "fails"
    guided, _ = pair(records, "entropy_guided")
    table4, _ = pair(records, "table1_resnet20_cifar10")
    extra = ""
    if guided and table4:
        g = guided["run"]["pqa"]
        extra = (f" Trained (ResNet-20, lambda0={g['threshold']:g}): the rule's alpha={g['alpha']:g}, beta={g['beta']:g} "
                 f"gives {pct(snn_at(guided, 'test_acc', 1))}% at T=1 against {pct(snn_at(table4, 'test_acc', 1))}% "
                 f"for Table 4's.")
    runs = records.where(["entropy_guided"], task="train")
    return Claim("The entropy rule (ratio closest to 1) picks Table 4's alpha=-0.25, beta=1 (L=8, lambda=8)",
                 "Table 4: alpha=-0.25, beta=1", f"the rule picks alpha={alpha:g}, beta={beta:g} (ratio {ratio:.3f})."
                 + extra, verdict, "fig2_entropy.png, table1_cifar10.md (entropy_guided)",
                 "closed form" + (f"; {scale_of(runs)}" if runs else ""))


def table1_headline_claim(records: Records) -> Claim:
    found, runs = [], []
    for model in CNNS:
        pmsm, _ = pair(records, f"table1_{model}_cifar10")
        if pmsm:
            paper = paper_figure("Table 1", model, "pmsm", "snn_acc", 1)
            found.append(f"{model} {pct(snn_at(pmsm, 'test_acc', 1))} (paper {pct(paper)})")
            runs += records.where([f"table1_{model}_cifar10"], task="train", method="pmsm")
    return Claim("Table 1 accuracies at T=1 after the paper's 600 epochs (ResNet-20 93.78, VGG-16 95.67)",
                 "Table 1", "; ".join(found) + " after the budget's epochs, not 600" if found else "-", "untested",
                 "table1_cifar10.md", scale_of(runs))


def claims(records: Records, grid, points: dict) -> list[Claim]:
    energy, layers = energy_claim(records)
    small, headline = vit_claims(records)
    return [lossless_claim(records), stable_claim(records), beats_qcfs_claim(records), table1_headline_claim(records),
            entropy_phases_claim(grid),
            rise_then_drop_claim(points["alpha"], "alpha", "Fig. 3(a)",
                                 records.where(["ablation_alpha"], task="train")),
            rise_then_drop_claim(points["beta"], "beta", "Fig. 3(b)", records.where(["ablation_beta"], task="train")),
            energy, layers, small, vit_stable_claim(records), headline, entropy_rule_claim(records)]


def claims_markdown(rows: list[Claim], budget: str) -> str:
    head = ["# Claims ledger", "",
            f"Each claim of the PMSM paper, tested by this framework's own runs at BUDGET={budget} "
            "(sweeps/paper.sh), with the rule that gives its verdict. holds: the records meet the rule; "
            "fails: they contradict it; partly: some of it; untested: no run here can test it. Rebuilt by "
            "`python -m pmsm_exp.runs.campaign` from the committed records; no cell is typed by hand.", "",
            "| claim | the paper | ours | verdict | evidence | scale |", "|---|---|---|---|---|---|"]
    cells = lambda s: str(s).replace("|", "/").replace("\n", " ")   # noqa: E731
    head += [f"| {cells(c.claim)} | {cells(c.paper)} | {cells(c.ours)} | **{c.verdict}** | {cells(c.evidence)} "
             f"| {cells(c.scale)} |" for c in rows]
    counts = {v: sum(c.verdict == v for c in rows) for v in VERDICTS}
    head += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."]
    return "\n".join(head) + "\n"


def crosscheck_markdown(runs: Path) -> str:
    head = "# Our IF conversion against spikingjelly's (QCFS weights of Table 1's ResNet-20)\n\n"
    record = runs / "crosscheck.json"
    if not record.is_file():
        return head + "Not run yet (sweeps/paper.sh's crosscheck step; it needs spikingjelly: the [bench] extra).\n"
    result = json.loads(record.read_text())
    p = result.get("provenance") or {}
    return (head + crosscheck.markdown(result) + f"\nFrom `{record.name}` (code {str(p.get('git_commit'))[:8]}, "
            f"spikingjelly's IFNode stepped one timestep at a time, read out as the mean output over steps 1..T).\n")


def steps_markdown(runs: Path, budget: str) -> str:
    lines = [f"# Campaign BUDGET={budget}: steps", "",
             "Wall time of each step of sweeps/paper.sh as it ran (a relaunch adds rows; a step that found its "
             "jobs finished takes seconds).", "", "| step | started (UTC) | wall | exit |", "|---|---|---|---|"]
    steps = runs / "steps.tsv"
    if steps.is_file():
        from datetime import datetime, timezone
        for row in csv.reader(steps.read_text().splitlines(), delimiter="\t"):
            if len(row) == 5 and row[1] == budget:
                started = datetime.fromtimestamp(int(row[2]), timezone.utc).strftime("%Y-%m-%d %H:%M")
                lines.append(f"| {row[0]} | {started} | {int(row[3]) / 60:.1f} min | {row[4]} |")
    return "\n".join(lines) + "\n"


def recipe_of(metrics: dict) -> str:
    """The recipe a run trained with, as its command line named it."""
    named = [o.split("=", 1)[1] for o in (metrics.get("run") or {}).get("overrides") or [] if o.startswith("recipe=")]
    return f"recipe={named[-1]}" if named else "the experiment's own recipe"


def time_to_accuracy(records: Records, experiment: str = "table1_resnet20_cifar10") -> str:
    """An experiment's ResNet-20 PMSM run as a time-to-accuracy measurement (its training alone), and
    the QCFS run beside it."""
    pmsm, qcfs = pair(records, experiment)
    if not pmsm:
        return f"Time to accuracy: the {experiment} ResNet-20 PMSM run has not finished yet."
    t = pmsm.get("training") or {}
    line = (f"**Time to accuracy.** ResNet-20 PMSM, `{recipe_of(pmsm)}`, {t.get('epochs')} epochs on "
            f"{(pmsm.get('data') or {}).get('train_images')} training images: QANN "
            f"**{pct(pmsm['qann']['test_acc'])}%** on the {(pmsm.get('data') or {}).get('test_images')} test images "
            f"after **{t.get('wall_s', 0) / 60:.1f} min** of training (`training.wall_s`), SNN at T=1 "
            f"{pct(snn_at(pmsm, 'test_acc', 1))}% (agreement with the QANN {pct(snn_at(pmsm, 'agreement', 1))}%)")
    if qcfs:
        q = qcfs.get("training") or {}
        steps = ", ".join(f"T={t} {pct(snn_at(qcfs, 'test_acc', t))}%" for t in (1, 2, 4, 8, 16, 32, 64)
                          if snn_at(qcfs, "test_acc", t) is not None)
        same = "the same recipe" if recipe_of(qcfs) == recipe_of(pmsm) else f"`{recipe_of(qcfs)}`"
        line += (f"; QCFS with {same}: QANN {pct(qcfs['qann']['test_acc'])}%, {steps} "
                 f"({q.get('wall_s', 0) / 60:.1f} min of training)")
    return line + "."


def summary_markdown(records: Records, ledger: list[Claim], out: Path, budget: str) -> str:
    table1 = (out / "table1_cifar10.md").read_text().split("\n\nleft out:")[0].strip()
    counts = ", ".join(f"{sum(c.verdict == v for c in ledger)} {v}" for v in VERDICTS)
    return "\n".join([
        f"#### The paper in miniature: BUDGET={budget} (rebuilt from `results/runs/paper-{budget}/`)", "",
        time_to_accuracy(records), "",
        f"**Claims ledger** ({counts}; the rules and scales: [`results/CLAIMS.md`](results/CLAIMS.md)):", "",
        "| claim | the paper | ours | verdict |", "|---|---|---|---|",
        *[f"| {c.claim} | {c.paper} | {c.ours} | **{c.verdict}** |".replace("\n", " ") for c in ledger], "",
        "**Table 1 (CIFAR-10)**, `results/table1_cifar10.md`:", "", table1, "",
        "The rest: [Table 2](results/table2_vit.md), [Table 3](results/table3_energy.md), "
        "[Fig. 2](results/fig2_entropy.png), [Fig. 3(a)](results/fig3a_alpha.png), [Fig. 3(b)](results/fig3b_beta.png), "
        "[Fig. 4](results/fig4_layer_spikes.png), [Fig. 5](results/fig5_regimes.png), "
        "[Fig. 6](results/fig6_conversion_error.png), [our IF conversion against spikingjelly's]"
        "(results/crosscheck_spikingjelly.md), [wall time per step](results/campaign.md)."]) + "\n"


def splice(readme: Path, text: str, name: str = "campaign:summary") -> None:
    body = readme.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in body or end not in body:
        raise SystemExit(f"error: --readme: {readme} has no {start} ... {end} markers")
    a, b = body.index(start) + len(start), body.index(end)
    readme.write_text(body[:a] + "\n" + text + body[b:])


def build(runs: Path, out: Path, budget: str) -> list[Claim]:
    out.mkdir(parents=True, exist_ok=True)
    records = Records(report.collect(runs).runs)
    accuracy_table(runs, out, "table1_cifar10", TABLE1, "no finished Table 1 run")
    accuracy_table(runs, out, "table1_cifar100", TABLE1_CIFAR100,
                   "no CIFAR-100 on this machine (BUDGET=smoke runs these experiments on stand-in files)")
    accuracy_table(runs, out, "table2_vit", TABLE2, "no finished ViT run")
    energy_table(runs, out)
    grid = entropy_figures(out)["grid"]
    points = {param: ablation_figure(runs, records, out, name, experiment, param)
              for name, (experiment, param) in ABLATIONS.items()}
    spikes_figure(records, out)
    conversion_error_figure(records, out)
    ledger = claims(records, grid, points)
    (out / "CLAIMS.md").write_text(claims_markdown(ledger, budget))
    (out / "crosscheck_spikingjelly.md").write_text(crosscheck_markdown(runs))
    (out / "campaign.md").write_text(steps_markdown(runs, budget))
    (out / "summary.md").write_text(summary_markdown(records, ledger, out, budget))
    if budget == "smoke":
        for table in out.glob("*.md"):
            table.write_text(SMOKE + "\n\n" + table.read_text())
    return ledger


def main(argv=None) -> list[Claim]:
    ap = argparse.ArgumentParser(prog="python -m pmsm_exp.runs.campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True, help="the campaign's published records (OUT/runs/paper-BUDGET)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--budget", choices=("smoke", "cpu", "paper"), required=True)
    ap.add_argument("--readme", type=Path, default=None, help="also write summary.md between its markers")
    a = ap.parse_args(argv)
    if not a.runs.is_dir():
        raise SystemExit(f"error: --runs: got {a.runs}, which is not a folder")
    ledger = build(a.runs, a.out, a.budget)
    if a.readme:
        splice(a.readme, (a.out / "summary.md").read_text())
    print(claims_markdown(ledger, a.budget))
    print(f"written into {a.out}: tables, figures, CLAIMS.md, campaign.md")
    return ledger


if __name__ == "__main__":
    main()
