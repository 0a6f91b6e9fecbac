"""The files a run leaves on disk: `metrics.json`, always strict JSON with a status.

Every run ends with exactly one of STATUSES recorded, so a table never mistakes
a failed or diverged run for a finished one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

FINISHED, FAILED, DIVERGED, RUNNING = "finished", "failed", "diverged", "running"
STATUSES = (FINISHED, FAILED, DIVERGED, RUNNING)
METRICS_FILE = "metrics.json"


def _finite(value):
    """NaN/inf become None (JSON null), so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_metrics(out_dir: Path | str, metrics: dict, status: str) -> Path:
    """Write `metrics.json` (status first) atomically: a kill mid-write leaves the old file."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    path = Path(out_dir) / METRICS_FILE
    text = json.dumps({"status": status, **_finite(metrics)}, indent=2, allow_nan=False)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def checkpoint_file(run_dir: Path | str, metrics: dict) -> Path | None:
    """The checkpoint a run's record names, as a path on this machine: records keep it relative to
    the log root (`run.folder` says where the run folder is below it); older records, absolute."""
    name = (metrics.get("run") or {}).get("checkpoint")
    if not name:
        return None
    if Path(name).is_absolute():
        return Path(name)
    folder = Path((metrics.get("run") or {}).get("folder") or ".")
    root = Path(run_dir)
    for _ in folder.parts:
        root = root.parent
    return root / name


def read_metrics(path: Path | str) -> tuple[dict | None, str]:
    """(metrics, "") or (None, why it cannot be used) for a metrics.json file."""
    try:
        metrics = json.loads(Path(path).read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (OSError, ValueError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})".splitlines()[0]
    if not isinstance(metrics, dict) or "run" not in metrics:
        return None, "unreadable (no 'run' record)"
    return metrics, ""
