import math

import pytest

from lightning_prune.engine.schedules import (
    NON_MONOTONE,
    SCHEDULES,
    agp,
    dsd,
    get_schedule,
    is_non_monotone,
    iterative,
    one_shot,
    progress,
    scheduled_ratio,
)

GRID = [i / 200 for i in range(201)]


@pytest.mark.parametrize("name", sorted(set(SCHEDULES) - NON_MONOTONE))
def test_every_schedule_starts_at_zero_ends_at_one_and_is_monotone(name):
    schedule = get_schedule(name)
    values = [schedule(p) for p in GRID]
    assert values[0] == 0.0
    assert values[-1] == pytest.approx(1.0)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:])), name
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)


@pytest.mark.parametrize(
    ("name", "mid"),
    [("agp", 0.875), ("linear", 0.5), ("cos", 0.5), ("one_shot", 1.0), ("iterative", 1 / 3)],
)
def test_values_at_half_progress(name, mid):
    assert get_schedule(name)(0.5) == pytest.approx(mid)


def test_agp_is_cubic():
    for p in (0.1, 0.3, 0.9):
        assert agp(p) == pytest.approx(1 - (1 - p) ** 3)


def test_one_cycle_is_a_logistic_ramp_slow_then_fast_then_slow():
    f = get_schedule("one_cycle")
    assert f(0.1) < 0.1 and f(0.9) > 0.9  # slow start, saturating end
    assert 0.6 < f(0.5) < 0.8


def test_one_shot_jumps_at_the_first_step():
    assert one_shot(0.0) == 0.0
    assert one_shot(1e-6) == 1.0


def test_iterative_takes_equal_steps():
    values = sorted({iterative(p, n_steps=4) for p in GRID})
    assert values == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert iterative(0.5, n_steps=2) == 0.5 and iterative(0.49, n_steps=2) == 0.0
    assert get_schedule("iterative", n_steps=4)(0.75) == 0.75


def test_user_callable_passes_through():
    schedule = get_schedule(lambda p: math.sqrt(p))
    assert schedule(0.25) == 0.5


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="'nope'.*agp"):
        get_schedule("nope")


def test_progress_runs_over_the_pruning_epochs():
    assert [progress(e, 2, 5) for e in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        progress(0, 3, 2)


def test_scheduled_ratio_is_measured_against_the_original_and_never_compounds():
    ratios = [scheduled_ratio(e, 0.6, get_schedule("iterative", n_steps=3), 0, 2) for e in range(3)]
    assert ratios == pytest.approx([0.2, 0.4, 0.6])


def test_a_schedule_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        scheduled_ratio(0, 0.5, lambda p: 2.0, 0, 1)


def test_dsd_rises_to_the_target_at_half_way_and_falls_back_to_dense_like_fasterai():
    def sched_dsd(pos: float) -> float:  # fasterai 0.4.1's sched_dsd with start=0, end=1
        if pos < 0.5:
            return (1 + math.cos(math.pi * (1 - pos * 2))) / 2
        return 1 + (1 - math.cos(math.pi * (1 - pos * 2))) * -1 / 2

    values = [dsd(p) for p in GRID]
    assert values == pytest.approx([sched_dsd(p) for p in GRID], abs=1e-12)
    assert values[0] == 0.0 and values[100] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(b >= a for a, b in zip(values[:101], values[1:101]))  # up to p = 1/2
    assert all(b <= a for a, b in zip(values[100:], values[101:]))  # then down
    assert all(0.0 <= v <= 1.0 for v in values)
    assert get_schedule("dsd") is dsd


def test_only_the_named_falling_schedules_are_non_monotone():
    assert NON_MONOTONE == {"dsd"} and NON_MONOTONE <= set(SCHEDULES)
    assert is_non_monotone("dsd") and is_non_monotone(dsd) and is_non_monotone(get_schedule(dsd, alpha=None))
    assert not any(is_non_monotone(n) or is_non_monotone(SCHEDULES[n]) for n in set(SCHEDULES) - NON_MONOTONE)
    assert not is_non_monotone(lambda p: 1 - p)  # a callable is taken at its word
