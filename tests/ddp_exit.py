"""Run a DDP test script's ``main``, then destroy the process group before the interpreter exits
(:func:`lightning_prune.distributed.shut_down_process_group` says why). Imported by the
``*_ddp_script.py`` files (their folder is on ``sys.path`` when they run as scripts)."""

from __future__ import annotations

from collections.abc import Callable

from lightning_prune.distributed import shut_down_process_group


def run_then_shut_down(main: Callable[[], object]) -> None:
    try:
        main()
    finally:
        shut_down_process_group()
