"""Run a DDP test script's ``main`` and destroy the process group before the interpreter exits: left
alive, gloo's threads can be torn down mid-flight at exit ("terminate called without an active exception",
SIGABRT) after a fit that succeeded. Imported by the ``*_ddp_script.py`` files (their folder is on
``sys.path`` when they run as scripts)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def run_then_shut_down(main: Callable[[], object]) -> None:
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
