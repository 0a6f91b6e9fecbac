"""Run folders that survive a campaign: where a job writes, whether it already
finished, and which checkpoint it continues from.

- A single run gets a new timestamped folder; `resume=auto` instead reuses the
  newest unfinished run of the same command (same overrides) that has a checkpoint,
  and `resume=PATH` (a run folder or a .ckpt inside one) reuses that run's folder.
- A multirun job's folder is derived from its experiment and overrides
  (conf/hydra/default.yaml, runs/overrides.py), so a relaunched sweep lands every job in its previous
  folder: finished jobs are skipped, jobs with a checkpoint resume, the rest start.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from pmsm_exp.errors import CheckpointError, UserError
from pmsm_exp.models.weights import read_weights
from pmsm_exp.runs import records
from pmsm_exp.runs.overrides import comparable

LAST = Path("checkpoints") / "last.ckpt"


def is_finished(out_dir: Path | str) -> bool:
    metrics, _ = records.read_metrics(Path(out_dir) / records.METRICS_FILE)
    return metrics is not None and metrics.get("status") == records.FINISHED


def resumable_checkpoints(run_dir: Path | str) -> list[Path]:
    """`checkpoints/last.ckpt` and the `hpc_ckpt_N.ckpt` that Lightning's SLURM auto-requeue
    (SIGUSR1) saves in the run folder, newest first."""
    run_dir = Path(run_dir)
    found = [p for p in [run_dir / LAST, *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_checkpoint(run_dir: Path | str) -> Path | None:
    found = resumable_checkpoints(run_dir)
    return found[0] if found else None


def _run_folder_of(path: Path) -> Path:
    """The run folder holding a checkpoint (…/<run>/checkpoints/last.ckpt or …/<run>/hpc_ckpt_1.ckpt)."""
    for parent in path.parents[:2]:
        if (parent / ".hydra").is_dir():
            return parent
    raise UserError(f"resume: got {path}; a checkpoint inside a run folder (<run>/checkpoints/last.ckpt) "
                    f"or the run folder itself")


def _previous_run(runs_root: Path) -> Path | None:
    """Newest run under runs_root started with the same overrides, unfinished, with a checkpoint."""
    from hydra.core.hydra_config import HydraConfig
    wanted = comparable(HydraConfig.get().overrides.task)
    for run in sorted(runs_root.glob("*/"), reverse=True):  # timestamped names sort in time order
        overrides = run / ".hydra" / "overrides.yaml"
        if not overrides.is_file() or is_finished(run) or newest_checkpoint(run) is None:
            continue
        if comparable(yaml.safe_load(overrides.read_text()) or []) == wanted:
            return run
    return None


def resume_problem(resume) -> str:
    """Why `resume=PATH` cannot be continued ('' if it can, or for null/auto): said by the job wrapper
    in one line, since Hydra resolves the run folder (below) before any job code runs."""
    if resume in (None, "", "null", "auto"):
        return ""
    path = Path(str(resume)).expanduser().absolute()
    if not path.exists():
        return f"resume: got {resume}; no such file or folder (give auto, a run folder or a .ckpt)"
    try:
        _run_folder_of(path) if path.is_file() else None
    except UserError as err:
        return str(err)
    return ""


def run_dir(default: str, resume) -> str:
    """hydra.run.dir: the timestamped default, or the folder of the run being resumed (the default
    where `resume` names nothing resumable: the job then says why, see resume_problem)."""
    if resume in (None, "", "null"):
        return default
    if str(resume) == "auto":
        previous = _previous_run(Path(default).parent)
        return str(previous) if previous else default
    if resume_problem(resume):
        return default
    path = Path(str(resume)).expanduser().absolute()
    return str(path if path.is_dir() else _run_folder_of(path))


OmegaConf.register_new_resolver("pmsm_run_dir", run_dir, replace=True)


def resume_checkpoint(resume, out_dir: Path) -> str | None:
    """The checkpoint `trainer.fit(ckpt_path=...)` continues from, or None for a fresh start.
    resume=PATH must point at a checkpoint; otherwise the job's own folder is looked in, and an
    unreadable checkpoint there (a truncated file) gives way to the next newest readable one, with
    one line saying so; none readable is a one-line error naming the file and the fix."""
    named = resume not in (None, "", "auto")
    if named:
        path = Path(str(resume)).expanduser().absolute()
        candidates = [path] if path.is_file() else resumable_checkpoints(path)
        if not candidates:
            raise UserError(f"resume: got {resume}; the folder holds no checkpoints/last.ckpt "
                            f"(give auto, a run folder with a checkpoint or a .ckpt)")
    else:
        candidates = resumable_checkpoints(out_dir)
    problems = []
    for ckpt in candidates:
        why = _unreadable(ckpt)
        if not why:
            if problems:
                print(f"resume: {problems[0][0]} is unreadable ({problems[0][1]}); continuing from {ckpt} instead")
            return str(ckpt)
        problems.append((ckpt, why))
    if problems:
        ckpt, why = problems[0]
        raise UserError(f"resume: {ckpt} is unreadable ({why}); delete it to start this run afresh, or give "
                        f"resume=PATH of another checkpoint")
    return None


def _unreadable(ckpt: Path) -> str:
    """'' if `ckpt` loads (tensors and plain values only), else why not, in a few words."""
    try:
        read_weights(ckpt, key="resume")
    except CheckpointError as err:
        return str(err).split(" (", 1)[-1].split(");", 1)[0] if " (" in str(err) else str(err)
    return ""
