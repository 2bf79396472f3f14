"""The app tells the truth about the model it saves: the metrics are the saved model's, last.ckpt is the last
epoch, a resumed run repeats the uninterrupted one, nothing is overwritten, errors are one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from test_app import QUICK, ROOT, compose_train

from lightning_prune.app.export import load_model
from lightning_prune.app.run import evaluate, run_training
from lightning_prune.app.sweep import SweepSummary, pareto_figure
from lightning_prune.checkpoint import restore_pruned

RUN = [*QUICK, "epochs=3", "ratio=0.5", "schedule=linear", "trainer.deterministic=true"]


def script(name: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def evaluate_cfg(model_path: Path, data: list[str]) -> object:
    data_cfg = OmegaConf.to_container(compose_train(data).data, resolve=True)
    return OmegaConf.create({"model_path": str(model_path), "latency_repeats": 1, "data": data_cfg})


@pytest.fixture(scope="module")
def last_epoch_prune_run(tmp_path_factory):
    """A run whose last prune comes after the last epoch's validation (end_epoch on the last epoch)."""
    out = tmp_path_factory.mktemp("run")
    with pytest.warns(UserWarning, match="not fine-tuned"):
        result = run_training(compose_train([*RUN, "end_epoch=2"]), out)
    return out, result


def test_the_reported_accuracy_is_the_saved_models(last_epoch_prune_run):
    out, result = last_epoch_prune_run
    summary = json.loads((out / "summary.json").read_text())
    measured = evaluate(evaluate_cfg(out / "pruned_model.pt", QUICK))
    assert summary["val_acc"] == pytest.approx(measured["accuracy"], abs=1e-6)
    assert result.val_acc == summary["val_acc"]


def test_last_ckpt_holds_the_last_epoch_and_the_saved_model(last_epoch_prune_run):
    out, result = last_epoch_prune_run
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 2
    twin = load_model(out / "pruned_model.pt")
    fresh = compose_train(RUN)
    from lightning_prune.app.run import build_model, build_module  # noqa: PLC0415

    module = build_module(fresh, build_model(fresh.model, 10, 3), 10)
    restore_pruned(module, out / "checkpoints" / "last.ckpt")
    saved = twin.state_dict()
    assert {k: v.shape for k, v in module.model.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    assert all(torch.equal(v, saved[k]) for k, v in module.model.state_dict().items())


class StopAfterEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_a_resumed_run_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    cfg = [*RUN, "epochs=4"]
    whole = run_training(compose_train(cfg), tmp_path / "whole")
    with pytest.raises(RuntimeError, match="interrupted"):
        run_training(compose_train(cfg), tmp_path / "cut", callbacks=[StopAfterEpoch(1)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] < 3
    resumed = run_training(compose_train([*cfg, f"ckpt_path={last}"]), tmp_path / "cut")
    a, b = whole.module.model.state_dict(), resumed.module.model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert whole.val_acc == resumed.val_acc


def test_a_mistyped_key_added_with_plus_is_refused_and_ignored_layers_is_a_top_level_key(tmp_path):
    from lightning_prune.app.config import build_callback, validate  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['ignored_layer'\]"):
        validate(compose_train([*QUICK, "+ignored_layer=[model.fc]"]))
    callback = build_callback(compose_train([*QUICK, "ignored_layers=[model.features.0.*]"]))
    assert list(callback.spec.ignored_layers) == ["model.features.0.*"]


def test_a_second_run_into_the_same_directory_is_refused_and_leaves_the_outputs(last_epoch_prune_run):
    out, _ = last_epoch_prune_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=rf"{out} already holds the outputs.*overwrite=true"):
        run_training(compose_train(RUN), out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_evaluate_refuses_data_the_model_was_not_trained_for(tmp_path):
    two_classes = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    torch.save(two_classes, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"has \[2\] outputs, but the data has 10 classes"):
        evaluate(evaluate_cfg(tmp_path / "m.pt", QUICK))
    with pytest.raises(ValueError, match=r"does not take this data's inputs of shape \[3, 24, 24\]"):
        evaluate(evaluate_cfg(tmp_path / "m.pt", [*QUICK, "data.size=24"]))


def test_user_errors_print_one_line_and_leave_no_empty_run_directory(tmp_path):
    corrupt = tmp_path / "cut.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    run_dir = tmp_path / "run"
    result = script("train.py", [*QUICK, f"ckpt_path={corrupt}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: ckpt_path=" in result.stderr and "not a complete file written by torch.save" in result.stderr
    assert not run_dir.exists()
    debug = script("train.py", [*QUICK, f"ckpt_path={corrupt}", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                   HYDRA_FULL_ERROR="1")
    assert "Traceback" in debug.stderr


def test_a_run_logs_into_train_log_and_exports_to_onnx(tmp_path):
    run_dir = tmp_path / "run"
    result = script("train.py", [*QUICK, "epochs=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "final val accuracy (of the saved model)" in log and "PruningCallback" in log
    console = result.stdout + result.stderr  # each message once: Lightning's own console handlers are off
    assert console.count("PruningCallback: epoch 0: removed") == 1, console[-3000:]
    exported = script("export.py", [f"model_path={run_dir / 'pruned_model.pt'}", "format=onnx",
                                    "latency_repeats=3"], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    onnx = summary["onnx"]
    assert Path(onnx["path"]).is_file() and onnx["max_abs_diff"] < 1e-4
    assert onnx["onnxruntime_ms_batch_1"] > 0 and onnx["pytorch_ms_batch_1"] > 0
    import numpy as np  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415

    model = load_model(run_dir / "pruned_model.pt").eval()
    batch = torch.randn(5, 3, 16, 16)
    got = onnxruntime.InferenceSession(onnx["path"]).run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model(batch).numpy(), atol=1e-4)


def test_the_sweep_plot_has_a_title_a_dense_reference_and_labelled_points(tmp_path, caplog):
    rows = [
        {"criterion": "l2", "setting": "ratio=0.0", "val_acc": 0.9, "macs_ratio": 1.0, "error": ""},
        {"criterion": "l2", "setting": "ratio=0.4", "val_acc": 0.8, "macs_ratio": 0.5, "error": ""},
        {"criterion": "l1", "setting": "macs budget=0.3", "val_acc": 0.7, "macs_ratio": 0.3, "error": ""},
    ]
    fig = pareto_figure(rows, "sweep")
    (ax,) = fig.axes
    assert "val accuracy" in ax.get_title() and "3 of 3 jobs" in ax.get_title()
    assert "fraction" in ax.get_xlabel() and "fraction" in ax.get_ylabel()
    assert {t.get_text() for t in ax.texts} == {"ratio=0.0", "ratio=0.4", "macs budget=0.3"}
    assert any(line.get_label() == "dense accuracy" and line.get_ydata()[0] == 0.9 for line in ax.lines)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    with caplog.at_level("INFO", logger="lightning_prune.app.sweep"):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert "sweep_summary.csv" in caplog.text and "sweep_pareto.png" in caplog.text


def test_schema_names_are_not_among_the_choices():
    from hydra.errors import MissingConfigException  # noqa: PLC0415

    with pytest.raises(MissingConfigException) as err:
        compose_train(["schedule=nope"])
    choices = str(err.value).split("Available options in 'schedule':")[1].split("Config search path")[0].split()
    assert choices == ["agp", "cos", "iterative", "linear", "one_cycle", "one_shot"]
