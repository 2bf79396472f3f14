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
from collections.abc import Callable, Iterable, Sequence
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

    from lightning_prune.engine.latency import allocator_regime  # noqa: PLC0415

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "allocator": allocator_regime(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_pruning": torch_pruning.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes, this one included), None where the OS has
    none: a latency ratio timed while other work runs is not the one a quiet machine gives (on one 2-core
    Xeon, the same pruned resnet20 against its dense model measured 0.848 alone and 0.872 beside a second
    benchmark)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def pyplot() -> Any | None:
    """matplotlib's pyplot on the headless Agg backend, None where matplotlib is not installed (plots are
    optional; the JSON is the result)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def set_threads(threads: int) -> int:
    """Fix the intra-op thread count (timings are not comparable across counts) and the allocator's regime
    (``steady_allocator``, which the engine's CPU timings set as well), and return the thread count."""
    from lightning_prune.engine.latency import steady_allocator  # noqa: PLC0415 - not in the fasterai worker

    torch.set_num_threads(threads)
    steady_allocator()  # the engine times CPU passes this way too
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


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating folders) and close it; returns ``path``."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def save_result(result: dict[str, Any], out: str | os.PathLike, plot: Callable[[dict[str, Any], Path], Path | None]
                ) -> Path:
    """Plot ``result`` beside ``out`` (the same name, ``.png``), record the plot's file name in it as ``plot``
    (None without matplotlib) and write it as JSON to ``out``; returns the JSON's path."""
    out = Path(out)
    png = plot(result, out.with_suffix(".png"))
    result["plot"] = png.name if png else None
    return write_json(out, result)


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


def bisect_ratio(measure: Any, target: float, lo: float = 0.0, hi: float = 0.95, iters: int = 14,
                 tol: float = 0.002) -> tuple[float, float]:
    """The smallest pruning ratio in ``[lo, hi]`` whose ``measure(ratio)`` (e.g. the MACs fraction left,
    non-increasing in the ratio) is ``<= target``, by bisection, and that value; ``hi`` and its value when even
    ``hi`` stays above the target. Stops early once a value within ``tol`` below the target is found. It
    searches the ratio of a pruner whose own ratio means something else (fasterai's, Torch-Pruning's) so that
    it lands on a MACs budget.

    >>> round(bisect_ratio(lambda r: 1.0 - r, 0.25, tol=1e-4)[0], 3)
    0.75
    """
    hi_value = measure(hi)
    if hi_value > target:
        return hi, hi_value
    best = (hi, hi_value)
    for _ in range(iters):
        mid = (lo + hi) / 2
        value = measure(mid)
        if value <= target:
            hi, best = mid, (mid, value)
            if target - value <= tol:
                break
        else:
            lo = mid
    return best


def calibrate_on_fits(fit_macs: Any, target: float, ratio: float, tolerance: float = 0.01,
                      tries: int = 6) -> tuple[float, list[tuple[float, float]]]:
    """The pruning ratio whose fit (``fit_macs(ratio)``: trained MACs fraction, non-increasing in the ratio)
    lands nearest ``target``, starting from ``ratio`` (the dry-prune guess) and interpolating inside the
    bracket the fits found (ratio 0 keeps every MACs); stops within ``tolerance``. Returns it and every
    ``(ratio, trained MACs)`` tried, in order.

    >>> calibrate_on_fits(lambda r: 1 - r, 0.5, 0.8)[0]  # a linear response is solved in one step
    0.5
    """
    tried = [(ratio, fit_macs(ratio))]
    lo, hi = (0.0, 1.0), (1.0, 0.0)  # (ratio, MACs) known to keep more / fewer MACs than the target
    while abs(tried[-1][1] - target) > tolerance and len(tried) < tries:
        r, m = tried[-1]
        lo, hi = ((r, m), hi) if m > target else (lo, (r, m))
        nxt = lo[0] + (lo[1] - target) * (hi[0] - lo[0]) / (lo[1] - hi[1])
        tried.append((nxt, fit_macs(nxt)))
    return min(tried, key=lambda t: abs(t[1] - target))[0], tried


def time_hooks(obj: Any, names: Iterable[str]) -> dict[str, list[float]]:
    """Wrap the methods ``names`` of ``obj`` (a Lightning or fastai callback: both look hooks up on the
    instance) so that each call's wall time is appended to the returned ``{name: [seconds, ...]}``."""
    import time
    from collections import defaultdict

    times: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name].append(time.perf_counter() - start)

        return wrapper

    for name in names:
        setattr(obj, name, timed(name, getattr(obj, name)))
    return times


def evaluate_accuracy(model: torch.nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` in eval mode over ``(inputs, labels)`` batches."""
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def latency_vs_dense(model: Any, dense: Any, inputs: torch.Tensor, pairs: int, warmup: int = 10) -> tuple[float, float]:
    """Median pruned/dense latency ratio on ``inputs``, timed interleaved (A B A B ...) with the dense model,
    and the model's median ms."""
    import statistics

    from lightning_prune.engine.latency import pairwise_latencies, pairwise_ratio  # noqa: PLC0415

    dense_t, model_t = pairwise_latencies([dense, model], inputs, repeats=pairs, warmup=warmup)
    return pairwise_ratio(dense_t, model_t).median, 1e3 * statistics.median(model_t)


def conv_weights(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def modelpruning_callback(kind: str, model: torch.nn.Module, amount: float, epoch: int) -> Any:
    """Lightning's masked ``ModelPruning``, applied once at the end of ``epoch`` and made permanent at the end.
    ``l1_unstructured``: every conv weight and the ``fc`` head, ranked globally; ``ln_structured``: L2 norm over
    conv output channels (BatchNorm's 1-D weights, which its default targets include, make it fail)."""
    from lightning.pytorch.callbacks import ModelPruning  # noqa: PLC0415

    common = dict(amount=amount, apply_pruning=lambda e: e == epoch, use_lottery_ticket_hypothesis=False,
                  make_pruning_permanent=True, verbose=0)
    if kind == "l1_unstructured":
        targets = conv_weights(model) + [(model.fc, "weight")]
        return ModelPruning("l1_unstructured", parameters_to_prune=targets, use_global_unstructured=True, **common)
    return ModelPruning("ln_structured", parameters_to_prune=conv_weights(model), pruning_norm=2,
                        use_global_unstructured=False, pruning_dim=0, **common)
