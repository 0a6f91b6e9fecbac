"""The job wrapper around train.py / convert.py: every outcome is recorded on disk.

- finished: the pipeline writes metrics.json itself;
- a job whose folder already says "finished" (a relaunched sweep) is skipped in one line;
- failed / diverged: metrics.json with that status and the error's one line, the
  traceback in the job's log file (train.log / convert.log), the W&B run finished as
  failed; then the error is raised again, so Hydra fails the job: a single run exits 1,
  a multirun goes on with the next job and exits non-zero at the end. Known user
  mistakes (any `ValueError`, a missing file) and divergence are raised as a `JobError`,
  which Hydra prints as one line (the method below raises plain Python errors);
- stopped by a signal (preemption): the checkpoint is saved (preemption.Resumable),
  nothing is recorded, the process exits 128 + signal and the next launch resumes.
"""
from __future__ import annotations

import functools
import logging
import traceback
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from pmsm_exp.config import plain
from pmsm_exp.engine.preemption import Preempted
from pmsm_exp.errors import DivergedError, UserError
from pmsm_exp.runs import provenance, records, tracking
from pmsm_exp.runs.folders import is_finished, resume_problem

USER_ERRORS = (ValueError, FileNotFoundError)   # UserError, CheckpointError, DatasetNotFoundError among them
log = logging.getLogger("pmsm_exp")


class JobError(CompactHydraException):
    """A job's failure that Hydra prints as its one line, without a traceback: a user mistake or
    divergence (the traceback is in the job's log file)."""


def route_logging() -> None:
    """Send the `pmsm_exp` and Lightning loggers to the job's log file (train.log). Hydra
    configures logging anew for every job (a file handler on the root logger); Lightning's
    logger does not propagate to the root, so without this train.log stays empty. `pmsm_exp`
    writes to the file only: a failure's traceback belongs there, not on the terminal, where
    Hydra prints the error itself."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    log.propagate = False
    for name in ("pmsm_exp", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)  # the previous job's file (basic launcher: same process)
        if not logger.propagate:  # (a propagating logger reaches the file through the root)
            for h in files:
                logger.addHandler(h)
    log.setLevel(logging.INFO)


class NoTips(logging.Filter):
    """Lightning's advertising lines ("💡 Tip: ... litlogger / litmodels") never reach the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


# deprecation notices from inside Lightning and torch (nothing the user can act on)
QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)


def quiet_console() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_utilities.core.rank_zero",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers]:
            if not any(isinstance(f, NoTips) for f in target.filters):
                target.addFilter(NoTips())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning(\.|$)")


def one_line(err: BaseException) -> str:
    """A user mistake's own message; anything else with its type in front."""
    first = (str(err).strip().splitlines() or [""])[0]
    return first if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {first}"


def failure_record(cfg) -> dict:
    """Enough of the run's identity for a report to list it as left out."""
    run = {"overrides": list(HydraConfig.get().overrides.task)}
    keys = {"task": "task_name", "experiment": "experiment_name", "seed": "seed", "model": "model.name",
            "data": "data.name", "method": "pqa.method"}  # convert.py: model/pqa come from the checkpoint
    try:
        run.update({k: OmegaConf.select(cfg, key, default=None) for k, key in keys.items()})
    except Exception:  # a config that cannot be resolved: the overrides and the error say enough
        pass
    return run


def log_root(cfg) -> Path | None:
    try:
        return Path(str(cfg.paths.log_dir)).expanduser().absolute()
    except Exception:  # noqa: BLE001 (an unresolvable config: paths stay as they are)
        return None


def record_failure(cfg, out_dir: Path, err: BaseException, status: str) -> None:
    if rank_zero_only.rank != 0:
        return
    log.error("job %s: %s\n%s", status, one_line(err),
              "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    root = log_root(cfg)
    try:
        config = provenance.portable(plain(cfg), root)
    except Exception:  # noqa: BLE001 (a config that cannot be resolved: the overrides and the error say enough)
        config = None
    record = {"run": provenance.portable(failure_record(cfg), root), "error": one_line(err), "config": config,
              "provenance": provenance.collect(str(cfg.get("task_name", "?")), HydraConfig.get().overrides.task, root)}
    try:
        records.write_metrics(out_dir, record, status)
    except OSError as write_err:  # e.g. a read-only log folder: the error itself matters more
        log.error("could not write %s: %s", out_dir / records.METRICS_FILE, write_err)
    tracking.close(exit_code=1)


def job(fn):
    """Wraps a Hydra task function (see module docstring)."""
    @functools.wraps(fn)
    def wrapper(cfg):
        route_logging()
        quiet_console()
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        if cfg.get("resume") in (None, "auto") and is_finished(out_dir):
            metrics, _ = records.read_metrics(out_dir / records.METRICS_FILE)
            print(f"skipped: {out_dir} already finished (delete its metrics.json to run it again)")
            return (metrics.get("qann") or {}).get("test_acc")
        with provenance.job_clock():   # the records written below say when the job started
            try:
                if resume_problem(cfg.get("resume")):   # Hydra resolved the run folder without complaint
                    raise UserError(resume_problem(cfg.get("resume")))
                return fn(cfg)
            except DivergedError as err:
                record_failure(cfg, out_dir, err, records.DIVERGED)
                raise JobError(str(err).strip().splitlines()[0]) from None
            except SIGTERMException as err:  # Lightning's SIGTERM stop carries exit status 0: not a success
                raise Preempted(128 + 15) from err
            except Exception as err:
                record_failure(cfg, out_dir, err, records.FAILED)
                if isinstance(err, USER_ERRORS):
                    raise JobError(one_line(err)) from None
                raise
    return wrapper
