"""Latency measurement: median wall-clock time of a forward pass, dense and pruned side by side.

Timings on a shared machine are noisy; :func:`compare_latency` interleaves the two models (A B A B ...)
after a warm-up, so that both see the same conditions, and reports medians; :func:`pairwise_ratio` gives
the median and quartiles of the per-pair ratios (what ``scripts/bench_latency.py`` reports).

On CPU every timing first calls :func:`steady_allocator`: with glibc's default thresholds the process hands
large freed buffers back to the system, and a forward pass whose activations are a few MB (a ResNet-20's
32x32 stage at batch 32) faults them in anew on most passes. That charged the 32x32 layers 4-5x their
time in a fresh process, so timed channel costs stripped the first stage and latencies did not match what
a process that has been running a while (a server, a training loop) sees.

>>> import torch
>>> dense, pruned = compare_latency(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8), torch.zeros(4, 64), 5)
>>> dense > 0 and pruned > 0
True
"""

from __future__ import annotations

import ctypes
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from .compat import preserved_training_modes
from .inputs import output_tensors
from .pruner import call_unpacked

Clock = Callable[[], float]
log = logging.getLogger(__name__)

# glibc's mallopt parameters: freed buffers up to these sizes stay in the process
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_BYTES, MMAP_BYTES = 1 << 28, 1 << 25  # 32 MiB is the largest mmap threshold glibc accepts
_ALLOCATOR = {"regime": "default"}  # the one record of what steady_allocator did


def steady_allocator() -> bool:
    """Let glibc keep freed buffers in the process (trim threshold 256 MiB, mmap threshold 32 MiB), so that
    timed passes are not charged page faults for memory handed back and mapped again; process-wide and
    kept, logged once. Returns whether the regime is steady (False off glibc: nothing is changed).

    >>> steady_allocator() == allocator_regime().startswith("steady")
    True
    """
    if _ALLOCATOR["regime"] != "default":
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    if not (mallopt(M_TRIM_THRESHOLD, KEPT_BYTES) and mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)):
        return False
    _ALLOCATOR["regime"] = f"steady: glibc trim threshold {KEPT_BYTES >> 20} MiB, mmap threshold {MMAP_BYTES >> 20} MiB"
    log.info("CPU timings: %s (freed buffers stay in the process; no page faults per pass)", _ALLOCATOR["regime"])
    return True


def steady_allocator_for(inputs: object) -> None:
    """:func:`steady_allocator` unless ``inputs`` live on a GPU (whose timings do not use glibc's heap)."""
    if not any(t.is_cuda for t in output_tensors(inputs)):
        steady_allocator()


def allocator_regime() -> str:
    """``"default"``, or the thresholds :func:`steady_allocator` set."""
    return _ALLOCATOR["regime"]


def _sync(inputs: object) -> None:
    for tensor in output_tensors(inputs)[:1]:
        if tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)


def _timed(model: Callable, inputs: object, clock: Clock = time.perf_counter) -> float:
    _sync(inputs)
    start = clock()
    call_unpacked(model, inputs)
    _sync(inputs)
    return clock() - start


@torch.inference_mode()
def pairwise_latencies(
    models: Sequence[Callable],
    inputs: object,
    repeats: int = 20,
    warmup: int = 3,
    clock: Clock = time.perf_counter,
) -> list[list[float]]:
    """Per-model lists of ``repeats`` forward-pass times, measured interleaved (A B A B ...), in eval and
    inference mode, after ``warmup`` untimed rounds; every submodule's mode is restored afterwards.
    ``inputs`` is a tensor, or a tuple/list (unpacked) or dict (keywords) of them. CUDA is synchronized
    around each pass when the inputs live on a GPU. ``models`` may be any callables (a ``torch.compile``'d
    module too); ``clock`` is for tests."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats!r} and {warmup!r}")
    steady_allocator_for(inputs)
    with ExitStack() as stack:
        for model in models:
            if isinstance(model, nn.Module):
                stack.enter_context(preserved_training_modes(model))
                model.eval()
        for _ in range(warmup):
            for model in models:
                call_unpacked(model, inputs)
        times: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, model in enumerate(models):
                times[i].append(_timed(model, inputs, clock))
    return times


@dataclass(frozen=True)
class RatioStats:
    """The pairwise ratios ``b[i] / a[i]`` of two interleaved series: median and spread (quartiles)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def spread(self) -> float:
        """Interquartile range of the ratios."""
        return self.q3 - self.q1


def pairwise_ratio(a_times: Sequence[float], b_times: Sequence[float]) -> RatioStats:
    """Median and quartiles of ``b[i] / a[i]`` over the pairs measured side by side.

    Taking each pair's ratio first cancels slow drifts (another process starting, a clock change) that
    hit both members of a pair alike; a median of ratios also ignores a few disturbed pairs.

    >>> s = pairwise_ratio([1.0, 2.0, 4.0, 1.0], [0.5, 1.0, 2.0, 5.0])
    >>> s.median, s.n
    (0.5, 4)
    """
    if len(a_times) != len(b_times) or not a_times:
        raise ValueError(f"need two equally long, non-empty series, got {len(a_times)} and {len(b_times)}")
    ratios = sorted(b / a for a, b in zip(a_times, b_times))
    if len(ratios) == 1:
        return RatioStats(ratios[0], ratios[0], ratios[0], 1)
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return RatioStats(statistics.median(ratios), q1, q3, len(ratios))


def measure_latency(model: nn.Module, inputs: object, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``model`` on ``inputs`` (see :func:`pairwise_latencies`).

    >>> measure_latency(torch.nn.Linear(4, 4), torch.zeros(1, 4), repeats=3) > 0
    True
    """
    (times,) = pairwise_latencies([model], inputs, repeats, warmup)
    return statistics.median(times)


def compare_latency(
    dense: nn.Module, pruned: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> tuple[float, float]:
    """Median seconds of ``dense`` and ``pruned`` on ``inputs``, measured interleaved."""
    dense_times, pruned_times = pairwise_latencies([dense, pruned], inputs, repeats, warmup)
    return statistics.median(dense_times), statistics.median(pruned_times)
