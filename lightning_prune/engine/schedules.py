"""Pruning schedules: pure functions of training progress.

A schedule maps progress ``p`` in ``[0, 1]`` over the pruning epochs to the fraction of the final
``ratio`` that must be reached at ``p``. Every schedule but those in :data:`NON_MONOTONE` returns 0 at
``p = 0`` and 1 at ``p = 1`` and is non-decreasing, so the removed share of channels never shrinks and the
final ratio is always reached.

The non-monotone ones (``dsd``, dense-sparse-dense) rise to 1 and fall back to 0: only masks, which can be
lifted, follow them (``SparsifyCallback``); ``PruningCallback`` removes channels for good and rejects them.

The callback evaluates ``p`` at the end of each pruning epoch with :func:`progress`, so the first pruning
epoch already has ``p > 0``: ``one_shot`` prunes everything there, the others a first slice.

>>> [round(agp(p), 3) for p in (0.0, 0.5, 1.0)]
[0.0, 0.875, 1.0]
>>> get_schedule("iterative", n_steps=2)(0.4)
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

Schedule = Callable[[float], float]


def _check_progress(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress p must lie in [0, 1], got {p!r}")
    return float(p)


def one_shot(p: float) -> float:
    """Everything at the first pruning epoch.

    >>> one_shot(0.0), one_shot(0.01), one_shot(1.0)
    (0.0, 1.0, 1.0)
    """
    return 1.0 if _check_progress(p) > 0.0 else 0.0


def iterative(p: float, n_steps: int = 3) -> float:
    """``n_steps`` equal steps; step k is reached at ``p = k / n_steps``.

    >>> [iterative(p, n_steps=4) for p in (0.2, 0.25, 0.6, 1.0)]
    [0.0, 0.25, 0.5, 1.0]
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    # the small epsilon keeps p = k / n exactly on step k despite float rounding
    return math.floor(_check_progress(p) * n_steps + 1e-9) / n_steps


def agp(p: float) -> float:
    """Automated gradual pruning (Zhu & Gupta, 2017): ``1 - (1 - p)^3``, fast early, slow late.

    >>> agp(0.5)
    0.875
    """
    return 1.0 - (1.0 - _check_progress(p)) ** 3


def linear(p: float) -> float:
    """Proportional to progress.

    >>> linear(0.25)
    0.25
    """
    return _check_progress(p)


def cos(p: float) -> float:
    """Cosine ramp ``(1 - cos(pi p)) / 2``: slow at both ends.

    >>> round(cos(0.5), 6)
    0.5
    """
    return (1.0 - math.cos(math.pi * _check_progress(p))) / 2.0


def one_cycle(p: float, alpha: float = 14.0, beta: float = 6.0) -> float:
    """The logistic ramp fasterai's ``sched_onecycle`` uses, rescaled to give exactly 0 at p=0 and 1 at p=1.

    fasterai uses ``(1 + exp(-alpha + beta)) / (1 + exp(-alpha p + beta))``, which starts at ~0.003; the
    affine rescaling keeps its shape and makes the end points exact.

    >>> one_cycle(0.0), one_cycle(1.0), round(one_cycle(0.5), 3)
    (0.0, 1.0, 0.731)
    """
    p = _check_progress(p)

    def ramp(x: float) -> float:
        return (1.0 + math.exp(-alpha + beta)) / (1.0 + math.exp(-alpha * x + beta))

    start = ramp(0.0)
    return (ramp(p) - start) / (1.0 - start)


def dsd(p: float) -> float:
    """Dense-sparse-dense (Han et al., 2017), as fasterai's ``sched_dsd``: a cosine rise to the full target at
    ``p = 1/2`` and the mirror-image fall back to 0 (dense) at ``p = 1``, i.e. ``(1 - cos(2 pi p)) / 2``.
    Not monotone: see :data:`NON_MONOTONE`.

    >>> [round(dsd(p), 3) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    return (1.0 - math.cos(2.0 * math.pi * _check_progress(p))) / 2.0


SCHEDULES: dict[str, Callable[..., float]] = {
    "one_shot": one_shot,
    "iterative": iterative,
    "agp": agp,
    "linear": linear,
    "cos": cos,
    "one_cycle": one_cycle,
    "dsd": dsd,
}

# the named schedules that fall again (to 0 at p = 1): masks can follow them, removed channels cannot
NON_MONOTONE = frozenset({"dsd"})


def is_non_monotone(schedule: str | Schedule) -> bool:
    """Whether ``schedule`` is one of :data:`NON_MONOTONE`, by name or as the function (bound or not) that
    :func:`get_schedule` returns for it; any other callable is taken at its word.

    >>> is_non_monotone("dsd"), is_non_monotone(get_schedule("dsd")), is_non_monotone("agp")
    (True, True, False)
    """
    if isinstance(schedule, str):
        return schedule in NON_MONOTONE
    while isinstance(schedule, partial):
        schedule = schedule.func
    return any(schedule is SCHEDULES[name] for name in NON_MONOTONE)


def get_schedule(schedule: str | Schedule, **kwargs: float) -> Schedule:
    """Return a schedule by name (with keyword arguments bound) or pass a callable through.

    >>> get_schedule("iterative", n_steps=2)(0.5)
    0.5
    >>> get_schedule(lambda p: p ** 2)(0.5)
    0.25
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # unset config keys arrive as None
    if callable(schedule):
        if kwargs:
            return partial(schedule, **kwargs)
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)} or pass a callable")
    if kwargs:
        return partial(SCHEDULES[schedule], **kwargs)
    return SCHEDULES[schedule]


def progress(epoch: int, start_epoch: int, end_epoch: int) -> float:
    """Progress after ``epoch`` over the pruning epochs ``start_epoch..end_epoch`` (both inclusive).

    It is 0 before ``start_epoch`` and 1 from ``end_epoch`` on; the end of the first pruning epoch is
    already ``1 / n_epochs`` along.

    >>> [progress(e, 1, 4) for e in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if end_epoch < start_epoch:
        raise ValueError(f"end_epoch ({end_epoch}) must be >= start_epoch ({start_epoch})")
    if epoch < start_epoch:
        return 0.0
    return min(1.0, (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1))


def scheduled_ratio(
    epoch: int, ratio: float, schedule: Schedule, start_epoch: int, end_epoch: int
) -> float:
    """Share of the ORIGINAL channels removed after ``epoch``: ``ratio * schedule(progress)``.

    >>> scheduled_ratio(1, 0.5, linear, start_epoch=0, end_epoch=3)
    0.25
    """
    value = float(schedule(progress(epoch, start_epoch, end_epoch)))
    if not 0.0 <= value <= 1.0 + 1e-9:
        raise ValueError(f"schedule returned {value!r}; a schedule must return values in [0, 1]")
    return ratio * min(value, 1.0)
