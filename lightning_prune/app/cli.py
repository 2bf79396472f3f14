"""How the app's scripts meet the user: one clear line for a user error, the run's log in ``train.log``, no
empty run directory left behind by a failed run.

A user error is a ``ValueError`` or ``FileNotFoundError`` (bad config values, missing or corrupt files,
missing data): the scripts print ``error: <message>`` and exit with status 2. The traceback is shown only
with ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) or ``LP_DEBUG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
USER_ERRORS = (ValueError, FileNotFoundError)
HYDRA_FILES = {".hydra", "train.log"}


def debugging() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("LP_DEBUG") == "1"


def route_lightning_logs() -> None:
    """Send Lightning's log records to the handlers Hydra set up (console and ``train.log``).

    Lightning gives its loggers their own console handler and stops propagation when it is imported before
    logging is configured, so its messages (and the pruning callback's) never reached ``train.log``.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # each has a console handler of its own
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def remove_if_empty(run_dir: Path) -> bool:
    """Remove a run directory that holds nothing but Hydra's own files and empty folders."""
    if not run_dir.is_dir() or run_dir.resolve() == Path.cwd().resolve():
        return False
    for entry in run_dir.iterdir():
        if entry.name in HYDRA_FILES:
            continue
        if not entry.is_dir() or any(p.is_file() for p in entry.rglob("*")):
            return False
    shutil.rmtree(run_dir)
    return True


def user_errors_in_one_line(task: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra task function: a user error prints one line (and removes an empty run directory)."""

    @functools.wraps(task)
    def wrapper(*args: object, **kwargs: object) -> T:
        route_lightning_logs()
        try:
            return task(*args, **kwargs)
        except USER_ERRORS as err:
            if debugging():
                raise
            log.debug("user error", exc_info=True)
            print(f"error: {err}\n(set HYDRA_FULL_ERROR=1 to see the traceback)", file=sys.stderr)
            if HydraConfig.initialized():
                remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
            sys.exit(2)

    return wrapper
