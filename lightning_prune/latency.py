"""Latency measurement: median wall-clock time of a forward pass, dense and pruned side by side.

Timings on a shared machine are noisy; :func:`compare_latency` interleaves the two models (A B A B ...)
after a warm-up, so that both see the same conditions, and reports medians.

>>> import torch
>>> dense, pruned = compare_latency(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8), torch.zeros(4, 64), 5)
>>> dense > 0 and pruned > 0
True
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _timed(model: nn.Module, inputs: torch.Tensor) -> float:
    start = time.perf_counter()
    model(inputs)
    return time.perf_counter() - start


@torch.inference_mode()
def pairwise_latencies(
    models: list[nn.Module], inputs: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> list[list[float]]:
    """Per-model lists of ``repeats`` forward-pass times, measured interleaved, in eval and inference mode."""
    modes = [m.training for m in models]
    for model in models:
        model.eval()
    try:
        for _ in range(warmup):
            for model in models:
                model(inputs)
        times: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, model in enumerate(models):
                times[i].append(_timed(model, inputs))
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)
    return times


def measure_latency(model: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``model`` on ``inputs``.

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
