"""Paper-style tables rebuilt from the metrics.json files that runs leave on disk.

    python -m pmsm_exp.runs.report accuracy --logs logs [--experiment E ...] [--timesteps 1 8] [--out results] [--wandb]
    python -m pmsm_exp.runs.report ablation --logs logs --experiment ablation_alpha --param alpha --timesteps 1
    python -m pmsm_exp.runs.report energy   --logs logs --experiment table3_vgg16_cifar10 --timesteps 1 2
    python -m pmsm_exp.runs.report latest   --logs logs --experiment table3_vgg16_cifar10 --method pmsm
    python -m pmsm_exp.runs.report plot     --logs logs --experiment table1_resnet20_cifar10 --name table1_over_t

One row per setting and metric. Runs are grouped by experiment, task, model, data,
method, the resolved quantizer (L, alpha, beta, lambda0) and every other override
given on the command line, except the seed and keys that cannot change a result
(NOT_SETTINGS); a convert run also carries the overrides of the training run whose
checkpoint it simulated, when that run is under --logs. Rows appear only for the T
values some run of the row simulated. Seeds are the replicates (for convert runs: the checkpoints),
reported as mean ± std with their count n; a rerun of the same seed counts once
(the newest). Beside each number: the paper's figure (paper_results.csv, with the
table and row it came from) and ours - paper. Every run not counted is listed
with its reason (failed, diverged, unfinished, unreadable metrics.json, ...).

Units: metrics.json and the written CSV keep fractions; the printed and Markdown
tables show accuracies in percent (diff in percentage points), spikes in 1e5 per
image over steps 1..T, power in mW (paper Eq. 11). The output is deterministic
(sorted rows, fixed formats, paths relative to --logs), so committed results can
be checked against README text.

metrics.json files without a status were written before statuses existed; they
were only ever written after a completed run, so they count as finished (the
printout says how many), unless they lack a finite QANN accuracy or come from
an epochs=0 run. A NaN in such a file makes it unreadable (strict JSON).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path, PurePosixPath

from pmsm_exp.runs.overrides import has_effect, under
from pmsm_exp.runs.overrides import parse as parse_overrides
from pmsm_exp.runs.records import DIVERGED, FAILED, FINISHED, METRICS_FILE, RUNNING, read_metrics

TABLES = ("accuracy", "ablation", "energy")
BASELINE = "qcfs"   # Table 3's ratio: baseline power / method power at the same T

# Overrides that are not settings of a row, besides those that change nothing (runs/overrides.py):
# replicates (seed, the checkpoint a convert run evaluates), values shown in columns of their own
# (experiment, model, data, method, L/alpha/beta/lambda0, T), and analysis=..., which adds files
# to a run but no number to its row. trainer.devices stays a setting (see runs/overrides.py).
NOT_SETTINGS = (
    "seed", "ckpt_path", "task_name",
    "experiment", "experiment_name", "model", "model.name", "data", "data.name",
    "pqa", "pqa.method", "pqa.levels", "pqa.alpha", "pqa.beta", "pqa.threshold",
    "snn.neuron",            # the method column names a non-default neuron (pmsm+stbif)
    "snn.timesteps",         # how many steps are simulated; the value at each T is the same
)
NOT_SETTINGS_UNDER = ("analysis",)   # and every key below it


ACCURACY = ("ann_acc", "snn_acc")
FORMATS = {"spikes_e5": "{:.4g}", "power_mw": "{:.4g}", "power_ratio": "{:.3g}"}
PAPER_TABLES = {"accuracy": ("Table 1", "Table 2"), "ablation": ("Fig. 3(a)", "Fig. 3(b)"), "energy": ("Table 3",)}
EXPERIMENT_TABLES = {"table1_": ("Table 1",), "table2_": ("Table 2",), "table3_": ("Table 3",),
                     "ablation_alpha": ("Fig. 3(a)",), "ablation_beta": ("Fig. 3(b)",)}


def fail(message: str):
    """Bad input: one line, exit status 1."""
    raise SystemExit(f"error: {message}")


# ---------------------------------------------------------------- reading runs
@dataclass
class Run:
    folder: Path
    rel: str              # folder relative to --logs: stable across machines
    metrics: dict
    time: float           # finished_at if recorded, else metrics.json's mtime
    legacy: bool          # no status field (written before statuses existed)

    @property
    def record(self) -> dict:
        return self.metrics["run"]


@dataclass
class LeftOut:
    rel: str
    experiment: str
    reason: str


@dataclass
class Selection:
    runs: list[Run] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def legacy(self) -> int:
        return sum(r.legacy for r in self.runs)


def _hydra_experiment(folder: Path) -> str | None:
    """experiment_name from the run's .hydra/config.yaml, for runs without a readable metrics.json."""
    try:
        import yaml
        return yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()).get("experiment_name")
    except Exception:  # missing or damaged: the run is still listed, as of an unknown experiment
        return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_time(path: Path, metrics: dict) -> float:
    stamp = metrics.get("finished_at") or metrics["run"].get("finished_at")
    if isinstance(stamp, (int, float)):
        return float(stamp)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            pass
    return path.stat().st_mtime


def _why_not_counted(metrics: dict) -> str:
    """'' for a finished run with a result, else why it is left out."""
    status = metrics.get("status")
    detail = next((str(metrics[k]).splitlines()[0] for k in ("error", "reason", "message")
                   if metrics.get(k)), "")
    if status in (FAILED, DIVERGED):
        return status + (f": {detail}" if detail else "")
    if status == RUNNING:
        return "unfinished (status running)"
    if status not in (FINISHED, None):
        return f"unknown status {status!r}"
    acc = (metrics.get("qann") or {}).get("test_acc")
    if not _finite(acc):
        return f"no finite QANN accuracy (qann.test_acc = {acc!r})"
    if "epochs=0" in (metrics["run"].get("overrides") or []):
        return "untrained (epochs=0)"
    return ""


def collect(logs: Path, experiments: list[str] | None = None) -> Selection:
    """Every run folder under `logs` (a metrics.json or a .hydra folder), of the given experiments:
    the runs that count and the ones left out, with why."""
    if not logs.is_dir():
        fail(f"--logs: got {logs}, which is not a folder; give the folder runs write to (paths.log_dir, default logs/)")
    folders = {p.parent for p in logs.rglob(METRICS_FILE)} | {p.parent.parent for p in logs.rglob(".hydra/config.yaml")}
    sel = Selection()
    for folder in sorted(folders):
        rel = folder.relative_to(logs).as_posix() or "."
        path = folder / METRICS_FILE
        if not path.exists():
            metrics, why = None, "unfinished (no metrics.json: still running, or killed before it wrote one)"
        else:
            metrics, why = read_metrics(path)
            if metrics is not None and not isinstance(metrics["run"], dict):
                metrics, why = None, "unreadable ('run' is not a record)"
        experiment = metrics["run"].get("experiment") if metrics else _hydra_experiment(folder)
        if experiments and experiment is not None and experiment not in experiments:
            continue
        if metrics is not None:
            why = _why_not_counted(metrics)
        if why:
            sel.left_out.append(LeftOut(rel, experiment or "?", why))
        else:
            sel.runs.append(Run(folder, rel, metrics, _run_time(path, metrics), "status" not in metrics))
    return sel


# ---------------------------------------------------------------- grouping
def _overrides(record: dict) -> dict[str, str]:
    """The run's command-line overrides that are settings of its row, as key -> value."""
    return {k: v for k, v in parse_overrides(record.get("overrides")).items()
            if has_effect(k) and k not in NOT_SETTINGS and not under(k, NOT_SETTINGS_UNDER)}


def _portable(path: str) -> str:
    """A run folder path as published: '/' separators, and ':' (Hydra's sweep folder names,
    not allowed in Windows paths) as '=' (sweeps/publish_results.sh renames them so)."""
    return path.replace("\\", "/").replace(":", "=")


def trained_by(run: Run, runs: list[Run]) -> Run | None:
    """For a convert run, the training run (among `runs`) whose folder holds the checkpoint it
    evaluated, matched on the folder's path relative to the logs; else None."""
    r = run.record
    if r.get("task") != "convert" or not r.get("checkpoint"):
        return None
    folder = str(PurePosixPath(_portable(r["checkpoint"])).parent.parent)
    return next((t for t in runs if t.record.get("task", "train") == "train" and t.rel != "."
                 and (folder == _portable(t.rel) or folder.endswith("/" + _portable(t.rel)))), None)


def settings(run: Run, trained: Run | None = None) -> dict[str, str]:
    """The row's settings: the resolved quantizer and the overrides; a convert run also carries
    its training run's overrides (the recipe behind its checkpoint), its own taking precedence."""
    r = run.record
    pqa = r.get("pqa") or {}
    fixed = {"task": r.get("task", "train"), "L": pqa.get("levels"), "alpha": pqa.get("alpha"),
             "beta": pqa.get("beta"), "lambda0": pqa.get("threshold")}
    overrides = {**(_overrides(trained.record) if trained else {}), **_overrides(r)}
    return {**{k: _text(v) for k, v in fixed.items()}, **dict(sorted(overrides.items()))}


def _text(v) -> str:
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def replicate(run: Run) -> str:
    """What distinguishes replicates of one setting: the seed, or a convert run's checkpoint."""
    r = run.record
    if r.get("task") == "convert" and r.get("checkpoint"):
        return f"checkpoint {r['checkpoint']}"
    return f"seed {r.get('seed')}"


@dataclass
class Group:
    experiment: str
    model: str
    data: str
    method: str
    settings: dict[str, str]
    runs: list[Run]

    @property
    def family(self) -> tuple:
        return (self.experiment, self.model, self.data, self.method)


def group_runs(sel: Selection) -> list[Group]:
    """Runs with equal settings, one group each; a replicate run twice counts once (the newest)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in sel.runs:
        r = run.record
        key = (str(r.get("experiment")), str(r.get("model")), str(r.get("data")), str(r.get("method")),
               tuple(settings(run, trained_by(run, sel.runs)).items()))
        groups[key].append(run)
    out = []
    for (experiment, model, data, method, sett), runs in groups.items():
        newest: dict[str, Run] = {}
        for run in sorted(runs, key=lambda x: (x.time, x.rel)):
            rep = replicate(run)
            if rep in newest:
                sel.left_out.append(LeftOut(newest[rep].rel, experiment, f"superseded by {run.rel} ({rep}, newer)"))
            newest[rep] = run
        out.append(Group(experiment, model, data, method, dict(sett), sorted(newest.values(), key=lambda x: x.rel)))
    return out


def _number_key(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


QUANTIZER = ("task", "L", "alpha", "beta", "lambda0")


def varying(groups: list[Group]) -> dict[int, list[str]]:
    """Per group, the settings its row must show: the quantizer values that differ within its family
    (experiment, model, data, method; so a QCFS row does not say alpha=0) and the overrides that
    differ anywhere in its experiment. Overrides its whole experiment shares go to common_settings."""
    def differ(gs: list[Group], keys) -> set[str]:
        return {k for k in keys if len({g.settings.get(k, "(default)") for g in gs}) > 1}

    by_family, by_experiment = defaultdict(list), defaultdict(list)
    for g in groups:
        by_family[g.family].append(g)
        by_experiment[g.experiment].append(g)
    out = {}
    for g in groups:
        keys = differ(by_family[g.family], QUANTIZER)
        exp = by_experiment[g.experiment]
        keys |= differ(exp, {k for e in exp for k in e.settings if k not in QUANTIZER})
        out[id(g)] = [k for k in QUANTIZER if k in keys] + sorted(keys - set(QUANTIZER))
    return out


def common_settings(groups: list[Group]) -> dict[str, list[str]]:
    """Per experiment, the overrides all its rows share (e.g. epochs=1): the recipe behind them."""
    by_experiment = defaultdict(list)
    for g in groups:
        by_experiment[g.experiment].append(set(g.settings.items()))
    out = {}
    for experiment, sets in sorted(by_experiment.items()):
        shared = sorted(f"{k}={v}" for k, v in set.intersection(*sets) if k not in QUANTIZER)
        if shared:
            out[experiment] = shared
    return out


# ---------------------------------------------------------------- the paper's figures
@dataclass(frozen=True)
class PaperValue:
    table: str
    row: str
    model: str
    data: str
    method: str
    levels: str
    alpha: str
    beta: str
    param: str
    T: str
    metric: str
    value: float | None      # fraction for accuracies, else as printed
    unit: str
    note: str

    @property
    def source(self) -> str:
        return f"{self.table}: {self.row}" + ("" if self.value is not None else " (no value in the text)")


def paper_results() -> list[PaperValue]:
    """Tables 1-3 and Fig. 3 of the paper, transcribed once into paper_results.csv (percent as printed)."""
    text = resources.files("pmsm_exp.runs").joinpath("paper_results.csv").read_text()
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        value = float(row["value"]) if row["value"] else None
        if value is not None and row["unit"] == "%":
            value = value / 100
        out.append(PaperValue(**{**row, "value": value}))
    return out


def _matches(p: PaperValue, g: Group, metric: str, t: int | None) -> bool:
    if p.metric != metric or p.method != g.method or (p.model and p.model != g.model) or (p.data and p.data != g.data):
        return False
    # a figure with no value in the text (Fig. 3) names no T: it stands beside every T
    if (int(p.T) != t) if p.T else (t is not None and p.value is not None):
        return False
    return all(not want or (g.settings.get(k) not in ("", None) and float(g.settings[k]) == float(want))
               for k, want in (("L", p.levels), ("alpha", p.alpha), ("beta", p.beta)))


def paper_tables(kind: str, experiment: str) -> tuple[str, ...]:
    if kind == "energy":   # Table 3's figures, whichever experiment trained the pair (Table 1's VGG-16 too)
        return PAPER_TABLES[kind]
    for prefix, tables in EXPERIMENT_TABLES.items():
        if experiment.startswith(prefix):
            return tables
    return PAPER_TABLES[kind]


def paper_value(paper: list[PaperValue], kind: str, g: Group, metric: str, t: int | None) -> PaperValue | None:
    tables = paper_tables(kind, g.experiment)
    return next((p for p in paper if p.table in tables and _matches(p, g, metric, t)), None)


# ---------------------------------------------------------------- tables
def run_value(m: dict, metric: str, t: int | None):
    if metric == "ann_acc":
        return (m.get("qann") or {}).get("test_acc")
    snn = m.get("snn") or {}
    ts = snn.get("timesteps") or []
    key = {"snn_acc": "test_acc", "spikes_e5": "spikes_per_image", "power_mw": "power_mw"}[metric]
    if t not in ts or key not in snn:
        return None
    v = snn[key][ts.index(t)]
    return v / 1e5 if metric == "spikes_e5" and _finite(v) else v


def metrics_for(kind: str, timesteps: list[int]) -> list[tuple[str, int | None]]:
    if kind == "energy":
        return [("ann_acc", None)] + [(m, t) for t in timesteps
                                      for m in ("snn_acc", "spikes_e5", "power_mw", "power_ratio")]
    return [("ann_acc", None)] + [("snn_acc", t) for t in timesteps]


def _stats(values: list) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if _finite(v)]   # never a NaN into a mean
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _r(v: float | None) -> float | None:
    """10 significant digits: stable text in the CSV, far below any noise of a measurement."""
    return None if v is None else float(f"{v:.10g}")


def build_table(kind: str, groups: list[Group], timesteps: list[int], param: str | None = None,
                paper: list[PaperValue] | None = None) -> list[dict]:
    """One row per group and metric: ours (mean, std, count over replicates), paper, diff."""
    paper = paper_results() if paper is None else paper
    vary = varying(groups)

    def order(g: Group):
        sett = tuple((k, _number_key(v)) for k, v in g.settings.items())
        p = _number_key(g.settings.get(param, "")) if param else (0, 0.0, "")
        if param == "alpha":          # as the paper's Fig. 3(a): from -0.125 down to -1
            p = (p[0], -p[1], p[2])
        return (g.experiment, g.data, g.model, p, g.method != BASELINE, g.method, sett)

    groups = sorted(groups, key=order)
    means = {}
    for g in groups:
        for metric, t in metrics_for(kind, timesteps):
            if metric != "power_ratio":
                means[id(g), metric, t] = _stats([run_value(r.metrics, metric, t) for r in g.runs])
    rows = []
    for g in groups:
        shown = [k for k in vary[id(g)] if k != param]
        base = next((b for b in groups if b.method == BASELINE and (b.experiment, b.model, b.data) == g.family[:3]
                     and {k: v for k, v in b.settings.items() if k not in ("L", "alpha", "beta", "lambda0")}
                     == {k: v for k, v in g.settings.items() if k not in ("L", "alpha", "beta", "lambda0")}), None)
        for metric, t in metrics_for(kind, timesteps):
            if metric == "power_ratio":
                mine, theirs = means[id(g), "power_mw", t][0], base and means[id(base), "power_mw", t][0]
                # a ratio of the means, no std of its own
                mean, std, count = (theirs / mine, None, len(g.runs)) if mine and theirs else (None, None, 0)
                p = _paper_ratio(paper, kind, g, t)
                pv, source = (p, f"{paper_tables(kind, g.experiment)[0]}: from the printed powers") if p else (None, "")
            else:
                mean, std, count = means[id(g), metric, t]
                if count == 0:   # no run of the row has it (a T it did not simulate): no row
                    continue
                pvalue = paper_value(paper, kind, g, metric, t)
                pv, source = (pvalue.value, pvalue.source) if pvalue else (None, "")
            row = {"experiment": g.experiment, "model": g.model, "data": g.data, "method": g.method}
            if param:
                row[param] = g.settings.get(param, "")
            row.update({"settings": " ".join(f"{k}={g.settings.get(k, '(default)')}" for k in shown),
                        "code": code_of(g), "machine": machine_of(g), "n": len(g.runs), "seeds": " ".join(replicate(r).split(" ", 1)[1] for r in g.runs),
                        "metric": metric, "T": t,
                        "ours": _r(mean), "std": _r(std), "count": count, "paper": _r(pv),
                        "diff": _r(mean - pv) if mean is not None and pv is not None else None,
                        "paper_source": source})
            rows.append(row)
    return rows


def code_of(g: Group) -> str:
    """The commits the row's runs ran (short; '+dirty' for uncommitted changes), or 'unknown' for
    records written before provenance was kept; a convert run, the commit that trained its weights too."""
    out = []
    for r in g.runs:
        p = r.metrics.get("provenance") or {}
        trained = ((r.metrics.get("trained") or {}).get("provenance") or {}).get("git_commit")
        code = (p["git_commit"][:8] + ("+dirty" if p.get("git_dirty") else "")) if p.get("git_commit") else "unknown"
        if r.record.get("task") == "convert":
            code += f" (trained: {trained[:8] if trained else 'unknown'})"
        out.append(code)
    return " ".join(sorted(set(out)))


def machine_of(g: Group) -> str:
    names = set()
    for r in g.runs:
        m = (r.metrics.get("provenance") or {}).get("machine") or {}
        names.add(m.get("gpu") or (f"CPU x{m['threads']}" if m.get("threads") else "unknown"))
    return " ".join(sorted(names))


def _paper_ratio(paper: list[PaperValue], kind: str, g: Group, t: int) -> float | None:
    """The paper's Table 3 ratio, from its printed powers (the printed ratios were lost in extraction)."""
    if g.method == BASELINE:
        mine = paper_value(paper, kind, g, "power_mw", t)
        return 1.0 if mine and mine.value else None
    mine = paper_value(paper, kind, g, "power_mw", t)
    tables = paper_tables(kind, g.experiment)
    base = next((p for p in paper if p.table in tables and p.method == BASELINE and p.metric == "power_mw"
                 and p.model == g.model and p.data == g.data and p.T == str(t)), None)
    return base.value / mine.value if mine and base and mine.value and base.value else None


# ---------------------------------------------------------------- output
def _fmt(metric: str, v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    if metric in ACCURACY:
        return f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"
    text = FORMATS[metric].format(v)
    return f"+{text}" if sign and v >= 0 else text


def display(rows: list[dict]) -> list[dict]:
    """The rows as printed: percent for accuracies, mean ± std, (k/n) when only k runs have the value."""
    out = []
    for r in rows:
        ours = _fmt(r["metric"], r["ours"])
        if r["std"] is not None:
            ours += f" ± {_fmt(r['metric'], r['std'])}"
        if r["ours"] is not None and r["count"] < r["n"]:
            ours += f" ({r['count']}/{r['n']})"
        d = {k: r[k] for k in r if k not in ("ours", "std", "count", "paper", "diff", "paper_source", "seeds", "code",
                                              "machine")}
        d.update(ours=ours, paper=_fmt(r["metric"], r["paper"]), diff=_fmt(r["metric"], r["diff"], sign=True),
                 source=r["paper_source"] or "-")
        out.append(d)
    if out and not any(d["settings"] for d in out):
        for d in out:
            del d["settings"]
    return out


def _cell(r: dict) -> str:
    """ours (mean ± std, (k/n) where only k runs have it) [the paper's figure]."""
    text = _fmt(r["metric"], r["ours"])
    if r["std"] is not None:
        text += f" ± {_fmt(r['metric'], r['std'])}"
    if r["ours"] is not None and r["count"] < r["n"]:
        text += f" ({r['count']}/{r['n']})"
    return text + (f" [{_fmt(r['metric'], r['paper'])}]" if r["paper"] is not None else "")


def wide(rows: list[dict], timesteps: list[int], param: str | None = None) -> list[dict]:
    """The paper's shape: one row per setting (model, data, method, what tells the row apart, where it
    ran), columns ANN and T=... with ours [the paper's figure] in each cell; the long rows stay the CSV."""
    several = len({r["experiment"] for r in rows}) > 1
    table: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] not in ACCURACY:
            continue
        key = (r["experiment"], r["model"], r["data"], r["method"], r.get(param, "") if param else "", r["settings"])
        if key not in table:
            row = {"experiment": r["experiment"]} if several else {}
            row.update({"model": r["model"], "data": r["data"], "method": r["method"]})
            if param:
                row[param] = r.get(param, "")
            row.update({"settings": r["settings"] or "-", "n": r["n"], "ANN": "-",
                        **{f"T={t}": "-" for t in timesteps}, "machine": r["machine"], "code": r["code"]})
            table[key] = row
        table[key]["ANN" if r["metric"] == "ann_acc" else f"T={r['T']}"] = _cell(r)
    out = list(table.values())
    if out and all(r["settings"] == "-" for r in out):
        for r in out:
            del r["settings"]
    return out


WIDE_LEGEND = ("cells: ours [the paper's figure]; ours is the mean ± std over n replicates (seeds; for convert runs, "
               "checkpoints), (k/n) where only k runs have the value; accuracies in percent. ANN: the quantized ANN; "
               "T=t: the SNN after t timesteps. machine: where the runs ran; code: the commit (8 digits) that "
               "produced the row, 'unknown' for records written before provenance was kept. The long format, "
               "with ours - paper, is the CSV beside this file.")


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no finished runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("-" if r[c] in ("", None) else str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(kind: str, rows: list[dict], sel: Selection, groups: list[Group], timesteps: list[int] | None = None,
           param: str | None = None) -> str:
    """The whole printout (also the .md file): table (accuracy tables in the paper's shape), units,
    shared recipe, runs left out."""
    if kind in ("accuracy", "ablation") and timesteps:
        parts = [markdown(wide(rows, timesteps, param)), "", WIDE_LEGEND]
    else:
        parts = [markdown(display(rows)), ""]
        parts.append("ours: mean ± std over n replicates (seeds; for convert runs, checkpoints); (k/n): only k runs "
                     "have the value. Accuracies in percent, diff = ours - paper in percentage points"
                     + ("; spikes in 1e5 per image over steps 1..T, power in mW (Eq. 11), power_ratio = "
                        f"{BASELINE} power / method power at the same T" if kind == "energy" else "") + ".")
    for experiment, shared in common_settings(groups).items():
        parts.append(f"every {experiment} row: " + " ".join(shared))
    if sel.legacy:
        parts.append(f"{sel.legacy} run(s) without a status field (written before statuses were recorded) "
                     "counted as finished.")
    left = sorted(sel.left_out, key=lambda x: x.rel)
    parts.append(f"\nleft out: {len(left)} run(s)" + (":" if left else ""))
    parts += [f"- {x.rel} [{x.experiment}]: {x.reason}" for x in left]
    return "\n".join(parts)


def write(kind: str, rows: list[dict], sel: Selection, text: str, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}_left_out.csv"]
    columns = list(dict.fromkeys(c for r in rows for c in r)) or ["experiment", "metric", "ours", "paper", "diff"]
    with open(files[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    files[1].write_text(text + "\n")
    with open(files[2], "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["run", "experiment", "reason"])
        w.writerows([x.rel, x.experiment, x.reason] for x in sorted(sel.left_out, key=lambda x: x.rel))
    return files


def write_plain(rows: list[dict], text: str, out: Path, name: str) -> None:
    """Print `text` and write it as OUT/name.md beside the rows as OUT/name.csv."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    (out / f"{name}.md").write_text(text + "\n")


def log_wandb(kind: str, name: str, rows: list[dict], sel: Selection, out: Path, mode: str, project: str) -> list[str]:
    """The table (and the runs left out) as W&B Tables in one job_type=report run per experiment,
    in that experiment's W&B group; returns the runs' folders."""
    from pmsm_exp.runs.tracking import log_report_table  # only when asked for: the tables need no W&B
    dirs = []
    for experiment in sorted({r["experiment"] for r in rows}):
        left_out = [{"run": x.rel, "reason": x.reason} for x in sorted(sel.left_out, key=lambda x: x.rel)
                    if x.experiment in (experiment, "?")]
        dirs.append(log_report_table(name, [r for r in rows if r["experiment"] == experiment], experiment,
                                     out_dir=out, project=project, mode=mode,
                                     config={"report": kind, "name": name, "experiment": experiment},
                                     more={f"{name}_left_out": left_out}, run_name=f"report-{name}-{experiment}"))
    return dirs


# ---------------------------------------------------------------- recipe selection (validation only)
def selection(groups: list[Group]) -> list[dict]:
    """One row per candidate recipe: what it changed and its accuracy on the held-out split of the
    training set after its last epoch (the test set is not shown: nothing is chosen on it)."""
    vary = varying(groups)
    rows = []
    # what a candidate changed is said against the candidate that sets the fewest overrides (the recipe
    # the selection started from), so rows of several rounds read alike
    def overridden(h: Group) -> int:
        return len(parse_overrides(h.runs[0].record.get("overrides")))
    by_experiment = defaultdict(list)
    for g in groups:
        by_experiment[g.experiment].append(g)
    start = {e: min(gs, key=overridden) for e, gs in by_experiment.items()}
    for g in groups:
        vals = [(r.metrics.get("training") or {}).get("final_val_acc") for r in g.runs]
        mean, std, count = _stats(vals)
        if not count:
            continue
        training = g.runs[0].metrics.get("training") or {}
        base = start[g.experiment].settings
        changed = " ".join(f"{k}={g.settings.get(k, '(default)')}" for k in vary[id(g)]
                           if k != "task" and g.settings.get(k, "(default)") != base.get(k, "(default)"))
        rows.append({"experiment": g.experiment, "model": g.model, "method": g.method, "changed": changed or "(none: the base)",
                     "n": len(g.runs), "val_acc": _r(mean), "val_std": _r(std), "epochs": training.get("epochs"),
                     "train_images": (g.runs[0].metrics.get("data") or {}).get("train_images"),
                     "val_images": (g.runs[0].metrics.get("data") or {}).get("val_images"),
                     "final_train_loss": _r(training.get("final_train_loss")), "code": code_of(g)})
    rows.sort(key=lambda r: (r["experiment"], -(r["val_acc"] or 0)))
    return rows


def render_selection(rows: list[dict]) -> str:
    best = {r["experiment"]: r["changed"] for r in rows[::-1]}   # rows sorted best first per experiment
    shown = [{"changed (from the base)": r["changed"], "n": r["n"],
              "val acc": f"{100 * r['val_acc']:.2f}" + (f" ± {100 * r['val_std']:.2f}" if r["val_std"] else ""),
              "epochs": r["epochs"], "train / val images": f"{r['train_images']} / {r['val_images']}",
              "final train loss": f"{r['final_train_loss']:.3f}" if r["final_train_loss"] is not None else "-",
              "code": r["code"]} for r in rows]
    return "\n".join([markdown(shown), "", "val acc: accuracy on the held-out part of the training set after the last "
                      "epoch (percent); the test set is never looked at here. Chosen: "
                      + "; ".join(f"{e}: {c}" for e, c in sorted(best.items())) + "."])


# ---------------------------------------------------------------- energy at equal T and at equal accuracy
E_SPIKE_PJ = 0.9   # paper Eq. 11: energy per spike (pJ), 1 ms steps


def equal_energy(groups: list[Group], method: str = "pmsm", baseline: str = BASELINE) -> list[dict]:
    """Per experiment with one `method` and one `baseline` row simulated over T: both at the method's
    T=1 (equal T) and the baseline at the first T whose accuracy reaches the method's T=1 accuracy
    (equal accuracy), under two counting conventions: spikes (an AIF output s counts |s|) and spike
    events (a non-zero output counts once); energy = N · 0.9 pJ per image, power = N · 0.9 pJ / (T · 1 ms)."""
    rows = []
    for experiment in sorted({g.experiment for g in groups}):
        pair = {m: [g for g in groups if g.experiment == experiment and g.method == m and len(g.runs) == 1
                    and len((g.runs[0].metrics.get("snn") or {}).get("timesteps") or []) > 1]
                for m in (method, baseline)}
        if len(pair[method]) != 1 or len(pair[baseline]) != 1:
            continue
        mine, theirs = (pair[m][0].runs[0].metrics["snn"] for m in (method, baseline))
        target = mine["test_acc"][0]
        reach = next((i for i, a in enumerate(theirs["test_acc"]) if a >= target), None)
        cases = [("equal T", method, mine, 0), ("equal T", baseline, theirs, 0)]
        if reach is not None:
            cases.append((f"equal accuracy (first T with acc >= {100 * target:.2f}%)", baseline, theirs, reach))
        for comparison, m, snn, i in cases:
            t = snn["timesteps"][i]
            row = {"experiment": experiment, "comparison": comparison, "method": m, "T": t,
                   "snn_acc": snn["test_acc"][i]}
            for convention, key in (("spikes", "spikes_per_image"), ("events", "spike_events_per_image")):
                n = snn[key][i]
                row.update({f"{convention}_per_image": _r(n), f"{convention}_energy_nj": _r(n * E_SPIKE_PJ / 1e3),
                            f"{convention}_power_mw": _r(n * E_SPIKE_PJ * 1e-12 / (t * 1e-3) * 1e3)})
            rows.append(row)
        base = {c: rows[-len(cases)][f"{c}_per_image"] for c in ("spikes", "events")}
        for row in rows[-len(cases):]:
            for c in ("spikes", "events"):
                row[f"{c}_vs_{method}_t1"] = _r(row[f"{c}_per_image"] / base[c]) if base[c] else None
    return rows


def render_energy(rows: list[dict]) -> str:
    shown = [{"comparison": r["comparison"], "method": r["method"], "T": r["T"], "SNN acc": f"{100 * r['snn_acc']:.2f}",
              "spikes/img": f"{r['spikes_per_image']:,.0f}", "events/img": f"{r['events_per_image']:,.0f}",
              "energy nJ (spikes)": f"{r['spikes_energy_nj']:.1f}", "energy nJ (events)": f"{r['events_energy_nj']:.1f}",
              "power mW (spikes)": f"{r['spikes_power_mw']:.4f}", "power mW (events)": f"{r['events_power_mw']:.4f}",
              "spikes / PMSM T=1": f"{r['spikes_vs_pmsm_t1']:.2f}x" if r.get("spikes_vs_pmsm_t1") else "-",
              "events / PMSM T=1": f"{r['events_vs_pmsm_t1']:.2f}x" if r.get("events_vs_pmsm_t1") else "-"}
             for r in rows]
    return "\n".join([markdown(shown), "", "spikes: an AIF output s counts |s| (paper Eq. 11); events: a non-zero "
                      "output counts once; energy per image = N · 0.9 pJ over steps 1..T; power (Eq. 11) = N · 0.9 pJ "
                      "/ (T · 1 ms): a longer simulation spreads the same spikes over more time."])


# ---------------------------------------------------------------- accuracy over T
def over_time(groups: list[Group]) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Per row simulated over more than one step: its mean SNN accuracy at each T, and its mean QANN
    accuracy; labelled by method, task and the settings that tell rows apart."""
    shown = varying(groups)
    curves, qanns, rows = {}, {}, []
    for g in sorted(groups, key=lambda g: (g.experiment, g.method, tuple(g.settings.items()))):
        steps = sorted({t for r in g.runs for t in (r.metrics.get("snn") or {}).get("timesteps") or []})
        if len(steps) >= 2:
            rows.append((g, steps))
    short = Counter(g.method for g, _ in rows)   # a method's settings appear only when it has several curves
    for g, steps in rows:
        extra = " ".join(f"{k}={g.settings.get(k, '(default)')}" for k in shown[id(g)] if k != "task")
        label = g.method if short[g.method] == 1 else f"{g.method} ({g.settings['task']}{', ' + extra if extra else ''})"
        curve = {t: _stats([run_value(r.metrics, "snn_acc", t) for r in g.runs])[0] for t in steps}
        curves[label] = {t: v for t, v in curve.items() if v is not None}
        qann = _stats([run_value(r.metrics, "ann_acc", None) for r in g.runs])[0]
        if qann is not None:
            qanns[f"{g.method} QANN"] = qann
    return curves, qanns


def plot(groups: list[Group], out: Path, name: str, title: str) -> Path:
    from pmsm_exp.analysis.plots import plot_accuracy_over_time  # matplotlib only when a plot is asked for
    curves, qanns = over_time(groups)
    if not curves:
        fail("no finished run of the selection was simulated over more than one timestep: nothing to plot")
    return plot_accuracy_over_time(out / f"{name}.png", curves, qanns, title=title, log_x=True)


# ---------------------------------------------------------------- newest run
def latest(logs: Path, experiment: str, method: str | None = None, task: str | None = None) -> Run:
    """The newest finished run of an experiment (by finished_at, else metrics.json's mtime)."""
    runs = [r for r in collect(logs, [experiment]).runs
            if (method is None or r.record.get("method") == method) and (task is None or r.record.get("task") == task)]
    if not runs:
        asked = f"--experiment {experiment}" + (f" --method {method}" if method else "") + (f" --task {task}" if task else "")
        fail(f"{asked}: no finished run under {logs}")
    return max(runs, key=lambda r: (r.time, r.rel))


# ---------------------------------------------------------------- command line
def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=(*TABLES, "equal", "selection", "latest", "plot"),
                    help="a table, equal (energy of PMSM and QCFS at equal T and at equal accuracy), latest (the "
                         "newest run's folder), or plot (SNN accuracy over T, a PNG)")
    ap.add_argument("--task", default=None, help="latest: only train or convert runs; equal: the runs compared")
    ap.add_argument("--logs", type=Path, default=Path("logs"))
    ap.add_argument("--experiment", nargs="*", default=None, help="only runs of these experiment_name values")
    ap.add_argument("--method", default=None, help="latest: only runs of this method (pmsm, qcfs, ...)")
    ap.add_argument("--timesteps", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--param", choices=("alpha", "beta"), default="alpha", help="ablation parameter")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default=None, help="file name (default: the table kind)")
    ap.add_argument("--format", choices=("paper", "long"), default="paper",
                    help="the printed/Markdown table: paper (accuracy and ablation: one row per setting, a column "
                         "per T) or long (one row per metric and T, with ours - paper); the CSV is always long")
    ap.add_argument("--wandb", action="store_true", help="also log the table to W&B (job_type=report)")
    ap.add_argument("--wandb-mode", choices=("offline", "online"), default="offline")
    ap.add_argument("--wandb-project", default="pmsm-exp")
    a = ap.parse_args(argv)
    if a.table == "latest" and (not a.experiment or len(a.experiment) != 1):
        fail(f"--experiment: got {a.experiment}; latest needs exactly one experiment name")
    if a.table != "latest" and (not a.timesteps or min(a.timesteps) < 1):
        fail(f"--timesteps: got {a.timesteps}; give one or more steps >= 1")
    return a


def main(argv=None) -> list[dict] | Path:
    a = parse(argv)
    if a.table == "latest":
        run = latest(a.logs, a.experiment[0], a.method, a.task)
        print(run.folder)
        return run.folder
    sel = collect(a.logs, a.experiment)
    groups = group_runs(sel)
    if a.table == "selection":
        rows = selection(groups)
        if not rows:
            fail("selection: no finished run with a validation accuracy (data.val_fraction > 0)")
        write_plain(rows, render_selection(rows), a.out, a.name or "selection")
        return rows
    if a.table == "equal":
        chosen = [g for g in groups if a.task is None or g.settings.get("task") == a.task]
        rows = equal_energy(chosen)
        if not rows:
            fail("equal: no experiment with one PMSM and one QCFS run simulated over several steps")
        write_plain(rows, render_energy(rows), a.out, a.name or "energy_equal")
        return rows
    if a.table == "plot":
        title = "SNN accuracy over T" + (f": {' '.join(a.experiment)}" if a.experiment else "")
        path = plot(groups, a.out, a.name or "accuracy_over_t", title)
        print(f"written: {path}")
        return path
    rows = build_table(a.table, groups, a.timesteps, a.param if a.table == "ablation" else None)
    text = render(a.table, rows, sel, groups, a.timesteps if a.format == "paper" else None,
                  a.param if a.table == "ablation" else None)
    print(text)
    if not rows:
        fail(f"--logs {a.logs}: no finished runs" + (f" of experiment(s) {' '.join(a.experiment)}" if a.experiment
                                                      else "") + " (left-out runs listed above)")
    name = a.name or a.table
    files = write(a.table, rows, sel, text, a.out, name)
    print(f"\n{sum(len(g.runs) for g in groups)} runs in {len(groups)} rows; written: "
          + ", ".join(str(f) for f in files))
    if a.wandb:
        log_wandb(a.table, name, rows, sel, a.out, a.wandb_mode, a.wandb_project)
    return rows


if __name__ == "__main__":
    main()
