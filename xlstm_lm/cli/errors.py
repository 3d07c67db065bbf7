"""How the CLIs report a user's mistake: one logged line and exit code 1, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

# Raised for bad configs, paths and data by the library, and by the NaN guard (FloatingPointError, with the step
# and what to do); a folder or file we may not write (PermissionError); a bug raises something else and keeps its
# traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, PermissionError)


@contextmanager
def exit_on_user_error(log: logging.Logger):
    """Log a user error's message and exit 1; HYDRA_FULL_ERROR=1 keeps the traceback for debugging."""
    try:
        yield
    except USER_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(error, PermissionError):
            log.error("%s: %s (check its permissions, or choose another folder)", error.filename,
                      (error.strerror or "permission denied").lower())
        else:
            log.error("%s", error)
        sys.exit(1)


class WritableOutputFolder(Callback):
    """Refuses in one line an output folder (hydra.run.dir: the run or evaluation directory) that cannot be
    created or written, before Hydra itself creates it and fails with a traceback. Listed in the CLIs' YAML
    under hydra.callbacks."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        folder = Path(config.hydra.run.dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            problem = None if os.access(folder, os.W_OK | os.X_OK) else "not writable"
        except OSError as error:
            problem = (error.strerror or type(error).__name__).lower()
        if problem:
            sys.stderr.write(f"output folder {folder}: {problem} (check its permissions, or choose another run_dir / "
                             "hydra.run.dir)\n")
            sys.exit(1)
