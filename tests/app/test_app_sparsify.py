"""The Hydra app's sparsify mode: the same configs, SparsifyCallback instead of PruningCallback."""

from __future__ import annotations

import json

import pytest
import torch
from test_app import QUICK, compose_train

from lightning_prune import SparsifyCallback, count_macs_params
from lightning_prune.app.config import build_mode_callback, validate
from lightning_prune.app.export import load_model
from lightning_prune.app.run import run_training


def test_the_sparsify_keys_reach_the_callback_with_the_schedule_group():
    cfg = compose_train(["mode=sparsify", "sparsify.sparsity=0.4", "sparsify.granularity=2:4", "schedule=cos",
                         "sparsify.context=global", "sparsify.start_epoch=1", "sparsify.lottery_ticket=true"])
    callback = build_mode_callback(cfg)
    assert isinstance(callback, SparsifyCallback)
    spec = callback.spec
    assert (spec.sparsity, spec.granularity, spec.context, spec.start_epoch) == (0.4, "2:4", "global", 1)
    assert spec.lottery_ticket is True and spec.schedule(0.5) == pytest.approx(0.5)  # cos
    assert not isinstance(build_mode_callback(compose_train(["sparsify.sparsity=0.4"])), SparsifyCallback)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mode=nope", r"mode='nope' is invalid; it must be one of \['prune', 'sparsify'\]"),
        ("sparsify.granularity=row", r"granularity='row' is unknown"),
        ("sparsify.sparsity=0.9", None),  # valid for weight granularity
        ("sparsify.sparsity=1.0", r"sparsity=1.0 is invalid; it must lie in \[0, 1\)"),
        ("sparsify.start_epoch=10", r"sparsify.start_epoch=10 is invalid; it must lie in \[0, 9\]"),
        ("sparsify.rewind_epoch=1", r"rewind_epoch=1 is invalid; it must be an integer in \[0, start_epoch=0\]"),
    ],
)
def test_bad_sparsify_overrides_fail_with_a_message_naming_the_key(override, message):
    cfg = compose_train(["mode=sparsify", override])
    if message is None:
        validate(cfg)
        return
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_a_sparsify_run_writes_its_report_and_a_compacted_model(tmp_path):
    cfg = compose_train([*QUICK, "epochs=2", "mode=sparsify", "sparsify.granularity=filter", "sparsify.sparsity=0.5",
                         "sparsify.compact=true", "schedule=one_shot"])
    result = run_training(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sparsity"]["granularity"] == "filter" and summary["sparsity"]["compacted"] is True
    assert summary["sparsity"]["reached"] == pytest.approx(result.callback.report[-1].sparsity)
    assert 0.3 < summary["sparsity"]["reached"] <= 0.5
    report = (tmp_path / "sparsity_report.txt").read_text()
    assert "Overall" in report and "sparsity" in report.splitlines()[0]
    model = load_model(tmp_path / "pruned_model.pt").eval()
    shape = tuple(summary["input_shape"])
    assert count_macs_params(model, torch.zeros(1, *shape))[0] == summary["macs"]["pruned"] < summary["macs"]["dense"]
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())
