"""Where a number came from: the code (git commit, dirty flag), the library versions, the machine,
the command and the time. Stored under `provenance` in every metrics.json (finished, failed and
diverged runs alike) and in every checkpoint, so a convert run can say what trained its weights.

Paths never name this machine: values under the log root are written relative to it
(`<logs>/train/runs/...`), under the repository relative to it (`<repo>/...`), anything else
by its last component (`<elsewhere>/data`).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("python", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "timm", "torchmetrics",
            "numpy", "wandb", "pmsm-exp")
_started: ContextVar[float | None] = ContextVar("pmsm_job_started", default=None)


@contextmanager
def job_clock():
    """The job's start time, for the records written inside the block (the job wrapper opens it)."""
    token = _started.set(time.time())
    try:
        yield
    finally:
        _started.reset(token)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def git_state() -> dict:
    """Commit and dirty flag of the code that runs (None outside a git checkout)."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        if name == "python":
            out[name] = platform.python_version()
            continue
        try:
            out[name.replace("pmsm-exp", "pmsm_exp")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = str(torch.__version__)   # the build that runs (e.g. +cpu), not only the distribution's
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "gpu_count": torch.cuda.device_count() if gpu else 0, "os": platform.platform(terse=True)}


def portable(value, log_root: Path | None):
    """`value` with every absolute path made relative (see the module docstring); containers too."""
    if isinstance(value, dict):
        return {k: portable(v, log_root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, log_root) for v in value]
    if not isinstance(value, str):
        return value
    if "=" in value and not value.startswith("/"):   # an override: key=path
        key, _, rest = value.partition("=")
        return f"{key}={portable(rest, log_root)}" if rest.startswith("/") else value
    if not value.startswith("/"):
        return value
    path = Path(os.path.normpath(value))
    for root, name in ((log_root, "<logs>"), (REPO, "<repo>")):
        if root is not None and (path == root or root in path.parents):
            rel = path.relative_to(root).as_posix()
            return name if rel == "." else f"{name}/{rel}"
    return "<elsewhere>/" + path.name   # no other part of a foreign path: it could name this machine


def command(task: str, overrides, log_root: Path | None = None) -> str:
    return " ".join([f"python {task}.py", *(portable(str(o), log_root) for o in overrides)])


def collect(task: str, overrides, log_root: Path | None) -> dict:
    """Everything above, with the job's start (job_clock) and now as its end."""
    now = time.time()
    started = _started.get() or now
    return {**git_state(), "started": iso(started), "finished": iso(now), "wall_s": round(now - started, 3),
            "versions": versions(), "machine": machine(),
            "command": command(task, list(overrides), log_root)}


def in_checkpoint() -> dict:
    """What a checkpoint keeps of the code that trained it (no machine paths, no times)."""
    return {**git_state(), "versions": versions()}

