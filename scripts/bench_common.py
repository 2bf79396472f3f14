"""Helpers shared by the benchmark scripts: machine description, JSON output, markdown tables.

The scripts are run as ``python scripts/bench_*.py`` (this folder is then on ``sys.path``) or imported by
the tests with ``scripts/`` put on the path.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Where and when a benchmark ran: CPU, threads used, cores, GPU, library versions, UTC date."""
    import lightning
    import torch_pruning

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_pruning": torch_pruning.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def set_threads(threads: int) -> int:
    """Fix the intra-op thread count (timings are not comparable across counts) and return it."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None as an em dash.

    >>> fmt(0.12345), fmt(None), fmt(3), fmt("a")
    ('0.123', '—', '3', 'a')
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table.

    >>> print(markdown_table(["a", "b"], [[1, 0.5]]))
    | a | b |
    |---|---|
    | 1 | 0.500 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


LATENCY_HEADERS = ["model", "input", "batch", "backend", "context", "round_to", "ratio", "MACs ratio",
                   "params ratio", "latency ratio (IQR)", "efficiency", "dense ms"]


def latency_cells(rows: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """The cells of ``bench_latency.py`` rows under :data:`LATENCY_HEADERS`."""
    return [[r["model"], r["size"], r["batch"], r["backend"], r["context"], r["round_to"] or "—", r["ratio"],
             r["macs_ratio"], r["params_ratio"],
             f"{r['latency_ratio']:.3f} ({r['latency_ratio_q1']:.2f}–{r['latency_ratio_q3']:.2f})",
             r["efficiency"], f"{r['dense_ms']:.1f}"] for r in rows]


def pruned_copy(model: torch.nn.Module, example: torch.Tensor, ratio: float, **pruner_kwargs: Any) -> torch.nn.Module:
    """A copy of ``model`` with ``ratio`` of its prunable channels removed by ``ChannelPruner`` (its ``fc``
    head kept), in eval mode; the achieved channel ratio is in its ``channel_ratio`` attribute."""
    from lightning_prune.engine.pruner import ChannelPruner  # noqa: PLC0415 - keeps update_benchmark_docs.py light

    pruned = copy.deepcopy(model)
    pruner = ChannelPruner(pruned, example, ignored_layers=[pruned.fc], **pruner_kwargs)
    pruner.prune_to(ratio)
    pruned.channel_ratio = pruner.channel_ratio()
    return pruned.eval()
