"""Entry-point helper: user mistakes end in one readable line, not a traceback."""
from __future__ import annotations

import functools
import os
import sys

from pmsm_exp.data import DatasetNotFoundError
from pmsm_exp.pipeline import CheckpointError

USER_ERRORS = (ValueError, FileNotFoundError, DatasetNotFoundError, CheckpointError)


def readable_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("PMSM_DEBUG"):
                raise
            print(f"error: {err}  (PMSM_DEBUG=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)
    return wrapper
