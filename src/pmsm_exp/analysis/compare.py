"""Compare analysed runs in Table 3's layout (PMSM beside QCFS):

    python -m pmsm_exp.analysis.compare PMSM=logs/train/runs/A QCFS=logs/train/runs/B --out cmp/

Each run directory must come from `train.py`/`convert.py` with `analysis=full`.
The last run is the baseline (ratio 1), the first sets the accuracy to match.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pmsm_exp.analysis.analyze import compare_runs


def load_summary(run_dir: Path) -> dict:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise SystemExit(f"error: {metrics_file} not found: give run directories written by train.py or convert.py")
    metrics = json.loads(metrics_file.read_text())
    if "analysis" not in metrics:
        raise SystemExit(f"error: {run_dir} has no analysis; rerun it with analysis=full "
                         f"(python convert.py ckpt_path={metrics['run'].get('checkpoint', 'PATH')} analysis=full)")
    return fractions(metrics["analysis"])


def fractions(summary: dict) -> dict:
    """Summaries written before accuracies became fractions (no accuracy_unit) held percent."""
    if summary.get("accuracy_unit") == "fraction":
        return summary
    keys = ("ann_accuracy", "snn_accuracy", "agreement_with_ann")
    scaled = {k: ([v / 100 for v in summary[k]] if isinstance(summary[k], list) else summary[k] / 100)
              for k in keys if k in summary}
    return {**summary, **scaled, "accuracy_unit": "fraction"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, at least two")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--timesteps", type=int, nargs="*", default=None, help="T values for the table (default: all)")
    a = ap.parse_args(argv)
    pairs = [r.split("=", 1) for r in a.runs]
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
        ap.error(f"give at least two LABEL=RUN_DIR arguments, got {a.runs}")
    summaries = {label: load_summary(Path(d)) for label, d in pairs}
    result = compare_runs(summaries, a.out, timesteps=a.timesteps)
    for name in ("table", "equal_accuracy"):
        print(Path(result["files"][name]).read_text())
    print(f"written to {a.out}")
    return result


if __name__ == "__main__":
    main()
