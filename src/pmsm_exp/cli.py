"""Entry-point helper: user mistakes end in one readable line, not a traceback."""
from __future__ import annotations

import functools
import os

from pmsm_exp.data import DatasetNotFoundError
from pmsm_exp.errors import DivergedError, UserError
from pmsm_exp.pipeline import CheckpointError

USER_ERRORS = (ValueError, FileNotFoundError, DatasetNotFoundError, CheckpointError)


def record_outcome(cfg, status: str, err: BaseException) -> None:
    """metrics.json for a run that ended without results (status and the error line)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from pmsm_exp.records import write_metrics
    get = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    run = {"task": get("task_name"), "experiment": get("experiment_name"), "model": get("model.name"),
           "data": get("data.name"), "method": get("pqa.method"), "seed": get("seed"),
           "overrides": list(HydraConfig.get().overrides.task)}
    write_metrics(HydraConfig.get().runtime.output_dir, {"run": run, "error": str(err).splitlines()[0]}, status)


def readable_errors(fn):
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        try:
            return fn(cfg, *args, **kwargs)
        except DivergedError as err:
            record_outcome(cfg, "diverged", err)
            raise  # Hydra marks the job failed; a multirun goes on
        except UserError:
            raise  # Hydra prints its one line and exits 1
        except USER_ERRORS as err:
            if os.environ.get("PMSM_DEBUG"):
                raise
            raise UserError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return wrapper
