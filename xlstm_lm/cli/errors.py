"""How the CLIs report a user's mistake: one logged line and exit code 1, not a traceback."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from omegaconf.errors import ConfigAttributeError

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


def refuse_unknown_keys(config_dir: str, config_name: str) -> None:
    """A misspelt key on the command line (trainer.max_stepz=3) in one line of ours, with the names it may have
    meant, then exit 1. Hydra's own message advises `+trainer.max_stepz=3`, which adds the key past the schema
    (and which `schemas.to_config` then refuses). The command line's overrides are composed here first; any other
    problem is left to Hydra, which reports it as it runs."""
    overrides = [argument for argument in sys.argv[1:] if not argument.startswith("-")]
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            compose(config_name, overrides=overrides)
    except ConfigCompositionException as error:
        cause = error.__cause__
        if not isinstance(cause, ConfigAttributeError) or not cause.full_key:
            return
        schema = cause.object_type
        names = [field.name for field in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        parent, _, name = cause.full_key.rpartition(".")
        prefix = f"{parent}." if parent else ""
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"did you mean {' or '.join(prefix + match for match in close)}?" if close
                else f"{parent or 'the config'} has {', '.join(names)}" if names else "check the spelling")
        sys.stderr.write(f"unknown config key {cause.full_key}: no such setting ({hint})\n")
        sys.exit(1)
    except Exception:  # noqa: BLE001 (sweep syntax and the like: Hydra reports it as it runs)
        return
