"""Rebuild paper-style tables from the metrics.json files that runs leave on disk.

    python -m pmsm_exp.report accuracy --logs logs/ [--experiment table1_vgg16_cifar10 ...] [--out results/]
    python -m pmsm_exp.report ablation --logs logs/ --experiment ablation_alpha --param alpha
    python -m pmsm_exp.report energy   --logs logs/ --experiment table3_vgg16_cifar10 --timesteps 1 2

Tables are written as CSV and Markdown and printed. Several runs with the same
key (e.g. seeds) are averaged and counted in the `runs` column. Accuracies are
in percent here (metrics.json keeps fractions), as the paper prints them.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

TABLES = ("accuracy", "ablation", "energy")


def collect(logs: Path, experiments: list[str] | None = None) -> list[dict]:
    """Every metrics.json under `logs` (optionally only the given experiments)."""
    if not logs.exists():
        raise SystemExit(f"error: {logs} does not exist: give the folder runs write to (paths.log_dir, default logs/)")
    runs = []
    for path in sorted(logs.rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # a job killed while writing; the others still count
        if experiments and metrics["run"].get("experiment") not in experiments:
            continue
        metrics["path"] = str(path.parent)
        runs.append(metrics)
    return runs


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _at(snn: dict | None, key: str, t: int) -> float | None:
    if not snn or t not in snn["timesteps"]:
        return None
    return snn[key][snn["timesteps"].index(t)]


def _average(rows: list[dict], key_fields: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in key_fields)].append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(key_fields, key))
        for field in members[0]:
            if field in key_fields:
                continue
            values = [m[field] for m in members if m[field] is not None]
            row[field] = round(mean(values), 4) if values else None
        row["runs"] = len(members)
        out.append(row)
    return out


def accuracy_table(runs: list[dict], timesteps: list[int]) -> list[dict]:
    """Tables 1/2: per model, data and method the QANN accuracy and the SNN's at each T."""
    rows = []
    for m in runs:
        r = m["run"]
        row = {"model": r["model"], "data": r["data"], "method": r["method"], "ann_acc": _pct(m["qann"]["test_acc"])}
        for t in timesteps:
            row[f"acc_T{t}"] = _pct(_at(m.get("snn"), "test_acc", t))
        rows.append(row)
    return sorted(_average(rows, ("model", "data", "method")), key=lambda x: (x["data"], x["model"], x["method"]))


def ablation_table(runs: list[dict], param: str, t: int) -> list[dict]:
    """Fig. 3: accuracy over alpha (or beta), one column pair per model/data."""
    rows = []
    for m in runs:
        r = m["run"]
        rows.append({param: r["pqa"][param], "model": r["model"], "data": r["data"],
                     "ann_acc": _pct(m["qann"]["test_acc"]), f"acc_T{t}": _pct(_at(m.get("snn"), "test_acc", t))})
    rows = _average(rows, (param, "model", "data"))
    grid: dict[float, dict] = defaultdict(dict)
    for row in rows:
        grid[row[param]][f"{row['model']}/{row['data']} ann"] = row["ann_acc"]
        grid[row[param]][f"{row['model']}/{row['data']} T{t}"] = row[f"acc_T{t}"]
    columns = sorted({c for g in grid.values() for c in g})
    return [{param: p, **{c: grid[p].get(c) for c in columns}} for p in sorted(grid, reverse=param == "alpha")]


def energy_table(runs: list[dict], timesteps: list[int], baseline: str = "qcfs") -> list[dict]:
    """Table 3: spikes (x1e5, |s| per image over steps 1..T), power (Eq. 11) and the ratio to the baseline."""
    rows = []
    for m in runs:
        r, snn = m["run"], m.get("snn")
        for t in timesteps:
            spikes = _at(snn, "spikes_per_image", t)
            events = _at(snn, "spike_events_per_image", t)
            rows.append({"data": r["data"], "model": r["model"], "method": r["method"], "T": t,
                         "ann_acc": _pct(m["qann"]["test_acc"]), "snn_acc": _pct(_at(snn, "test_acc", t)),
                         "spikes_e5": None if spikes is None else spikes / 1e5,
                         "events_e5": None if events is None else events / 1e5,
                         "power_mw": _at(snn, "power_mw", t)})
    rows = _average(rows, ("data", "model", "method", "T"))
    base = {(r["data"], r["model"], r["T"]): r["power_mw"] for r in rows if r["method"] == baseline}
    for r in rows:
        b = base.get((r["data"], r["model"], r["T"]))
        r["power_ratio_vs_" + baseline] = round(b / r["power_mw"], 3) if b and r["power_mw"] else None
    return sorted(rows, key=lambda x: (x["data"], x["model"], x["T"], x["method"] != baseline))


def write(rows: list[dict], out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    markdown = "\n".join(lines)
    (out / f"{name}.md").write_text(markdown + "\n")
    return markdown


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=TABLES)
    ap.add_argument("--logs", type=Path, default=Path("logs"))
    ap.add_argument("--experiment", nargs="*", default=None, help="only runs of these experiment_name values")
    ap.add_argument("--timesteps", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--param", choices=("alpha", "beta"), default="alpha", help="ablation parameter")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default=None, help="file name (default: the table kind)")
    a = ap.parse_args(argv)
    runs = collect(a.logs, a.experiment)
    if not runs:
        raise SystemExit(f"error: no metrics.json under {a.logs}"
                         + (f" for experiment(s) {', '.join(a.experiment)}" if a.experiment else ""))
    if a.table == "accuracy":
        rows = accuracy_table(runs, a.timesteps)
    elif a.table == "ablation":
        rows = ablation_table(runs, a.param, a.timesteps[0])
    else:
        rows = energy_table(runs, a.timesteps)
    print(write(rows, a.out, a.name or a.table))
    print(f"\n{len(runs)} runs; written to {a.out / (a.name or a.table)}.csv and .md")
    return rows


if __name__ == "__main__":
    main()
