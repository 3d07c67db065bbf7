"""How the CLIs report a user's mistake: one logged line and exit code 1, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

# Raised for bad configs, paths and data by the library, and by the NaN guard (FloatingPointError, with the step
# and what to do); a bug raises something else and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)


@contextmanager
def exit_on_user_error(log: logging.Logger):
    """Log a user error's message and exit 1; HYDRA_FULL_ERROR=1 keeps the traceback for debugging."""
    try:
        yield
    except USER_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", error)
        sys.exit(1)
