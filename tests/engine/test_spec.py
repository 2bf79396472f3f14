"""PruningSpec is the one declaration of the callback's parameters: the callback and the app follow it."""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial

import pytest

from lightning_prune import PruningCallback, PruningSpec
from lightning_prune.engine.schedules import dsd, get_schedule
from lightning_prune.engine.spec import SparsifySpec, app_fields


def test_the_callback_signature_is_the_spec():
    params = inspect.signature(PruningCallback.__init__).parameters
    names = [n for n in params if n != "self"]
    spec_fields = dataclasses.fields(PruningSpec)
    assert names == [f.name for f in spec_fields]
    for f in spec_fields:
        assert params[f.name].default == f.default, f.name


def test_the_callback_keeps_its_arguments_as_the_validated_spec():
    callback = PruningCallback(ratio=1 / 4, ignored_layers="model.fc", ratio_overrides={"a.*": 0})
    assert callback.spec.ratio == 0.25 and callback.spec.ignored_layers == ["model.fc"]
    assert callback.spec.ratio_overrides == {"a.*": 0.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, r"ratio=1.0 is invalid; it must lie in \[0, 1\)"),
        ({"ratio": True}, r"ratio=True is invalid"),
        ({"schedule": "nope"}, r"schedule='nope' is unknown; choose one of \['agp'"),
        ({"criterion": "nope"}, r"criterion='nope' is unknown; choose one of"),
        ({"start_epoch": 2, "end_epoch": 1}, r"end_epoch=1 is invalid; it must be an integer >= start_epoch \(2\)"),
        ({"max_layer_ratio": 0}, r"max_layer_ratio=0 is invalid; it must lie in \(0, 1\]"),
        ({"round_to": 0}, r"round_to=0 is invalid"),
        ({"target": "macs"}, r"target='macs' needs budget in \(0, 1\)"),
        ({"budget": 0.5}, r"budget=0.5 needs a budget target"),
        ({"ignored_layers": [3]}, r"ignored_layers=\[3\] is invalid; it must be a list of module-name patterns"),
        ({"ratio_overrides": {"a": 2.0}}, r"ratio_overrides\['a'\]=2.0 is invalid"),
        ({"optimizer_state": "keep"}, r"optimizer_state='keep' is unknown; choose 'slice' or 'reset'"),
    ],
)
def test_bad_arguments_name_the_value_and_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSpec(**kwargs)


def test_the_app_exposes_every_plain_field_with_its_default():
    exposed = app_fields()
    assert "example_inputs" not in exposed and "pruner_kwargs" not in exposed
    assert exposed["optimizer_state"][1] == "slice" and exposed["ignored_layers"][1] == []
    assert {"ratio", "context", "start_epoch", "end_epoch", "target", "budget", "ratio_overrides"} <= set(exposed)


def test_a_setting_that_prunes_nothing_is_flagged():
    assert not PruningSpec(ratio=0.0).prunes_anything
    assert PruningSpec(ratio=0.0, ratio_overrides={"x": 0.5}).prunes_anything


@pytest.mark.parametrize("schedule", ["dsd", get_schedule("dsd"), partial(dsd)])
def test_a_schedule_that_falls_back_to_dense_is_rejected_for_pruning_and_taken_for_sparsity(schedule):
    with pytest.raises(ValueError, match=r"schedule='dsd' falls back to dense .* channels .* cannot come back; "
                                         r"use SparsifyCallback"):
        PruningSpec(schedule=schedule)
    with pytest.raises(ValueError, match="use SparsifyCallback"):
        PruningCallback(schedule=schedule)
    assert SparsifySpec(schedule=schedule).schedule is schedule
