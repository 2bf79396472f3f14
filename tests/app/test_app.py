"""The Hydra app: configs compose and instantiate, bad overrides fail clearly, a run leaves its outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_prune import PruningCallback, count_macs_params
from lightning_prune.app.config import build_callback, register_configs, validate
from lightning_prune.app.export import load_model
from lightning_prune.app.run import build_model, build_module, run_training

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
GROUPS = {name: sorted(p.stem for p in (ROOT / "conf" / name).glob("*.yaml"))
          for name in ("model", "data", "schedule", "criterion", "trainer", "optimizer", "lr_scheduler")}
# small and quick: the tests' digits runs
QUICK = ["data=digits", "model=small_cnn", "model.width=8", "data.size=16", "latency_repeats=2",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]

register_configs()


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("train", overrides=overrides)


def test_every_group_has_the_documented_options():
    assert GROUPS["model"] == ["efficientnet_b0", "mobilenet_v3_small", "resnet18", "resnet20", "resnet34",
                               "resnet50", "resnet56", "small_cnn", "timm"]
    assert GROUPS["schedule"] == ["agp", "cos", "iterative", "linear", "one_cycle", "one_shot"]
    assert GROUPS["criterion"] == ["bn_scale", "fpgm", "hessian", "l1", "l2", "lamp", "large_final", "random",
                                   "squared_final", "taylor"]
    assert GROUPS["data"] == ["cifar10", "digits", "pets"]
    assert {"default", "cpu", "gpu"} <= set(GROUPS["trainer"])


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_instantiates(group, option, tmp_path):
    if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        cfg = compose_train([f"{group}={option}"])
        assert cfg.trainer.accelerator == "gpu"  # composes; a GPU trainer cannot be built on this machine
        return
    if group == "trainer" and option == "ddp":
        # its strategy depends on Hydra's run mode, which only a real run has (see the ddp tests below)
        cfg = compose_train([f"{group}={option}"])
        assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("cpu", 2)
        assert OmegaConf.to_container(cfg.trainer)["strategy"] == "${lp_ddp_strategy:${hydra:mode}}"
        return
    cfg = compose_train([f"{group}={option}", f"data.root={tmp_path}" if option in ("pets", "cifar10") else "seed=0"])
    validate(cfg)
    if group == "model":
        net = build_model(cfg.model, num_classes=7, in_channels=3)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    elif group == "data":
        dm = instantiate(cfg.data)
        assert dm.num_classes in (2, 10) and len(dm.input_shape) == 3 and dm.input_shape[0] == 3
    elif group in ("schedule", "criterion", "optimizer", "lr_scheduler"):
        callback = build_callback(cfg)
        assert isinstance(callback, PruningCallback)
        module = build_module(cfg, torch.nn.Linear(4, 2), num_classes=2)
        assert module.optimizer_factory is not None
        if group == "schedule":
            schedule = callback.spec.schedule
            assert schedule(0.0) == 0.0 and schedule(1.0) == pytest.approx(1.0)
    elif group == "trainer":
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.epochs


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("ratio=1.5", ValueError, r"ratio=1.5 is invalid; it must lie in \[0, 1\)"),
        ("schedule=nope", MissingConfigException, r"schedule/nope"),
        ("model=nope", MissingConfigException, r"(?s)model/nope.*Available options in 'model'.*resnet20.*timm"),
        ("data=nope", MissingConfigException, r"(?s)data/nope.*Available options in 'data'.*cifar10.*digits.*pets"),
        ("criterion=nope", MissingConfigException, r"criterion/nope"),
        ("epochs=abc", ConfigCompositionException, r"epochs=abc"),
        ("context=both", ValueError, r"context='both' is unknown; choose one of \['global', 'local'\]"),
        ("start_epoch=10", ValueError, r"start_epoch=10 is invalid; it must lie in \[0, 9\]"),
        ("budget=0.5", ValueError, r"budget=0.5 needs a budget target; set target to one of \['macs'"),
        ("target=macs", ValueError, r"target='macs' needs budget in \(0, 1\).*got budget=None"),
        ("target=flops", ValueError, r"target='flops' is unknown; choose one of \['channels', 'macs'"),
        ("on_unsafe=skip", ValueError, r"on_unsafe='skip' is unknown; choose one of \[.ignore., .raise.\]"),
        ("optimizer_state=keep", ValueError, r"optimizer_state='keep' is unknown; choose 'slice' or 'reset'"),
        ("sparse_training=-0.1", ValueError, r"sparse_training=-0.1 is invalid; it must be a regularisation"),
        ("distill.enabled=true distill.weight=2", ValueError,
         r"distill.weight=2.0 is invalid; it must lie in \(0, 1\]"),
        ("channel_cost=flops", ValueError, r"channel_cost='flops' is unknown; choose one of \['auto', 'none'"),
    ],
)
def test_bad_overrides_fail_with_a_message_naming_the_key(override, error, message):
    with pytest.raises(error, match=message):
        validate(compose_train(override.split(" ")))


def test_sparse_training_and_channel_cost_reach_the_callback():
    cfg = compose_train(["sparse_training=0.001", "sparse_start_epoch=1", "channel_cost=macs_memory"])
    validate(cfg)
    spec = build_callback(cfg).spec
    assert (spec.sparse_training, spec.sparse_start_epoch, spec.cost_kind) == (0.001, 1, "macs_memory")


def test_prune_on_fit_start_reaches_the_callback_with_the_one_shot_schedule_group():
    cfg = compose_train(["schedule=one_shot", "prune_on_fit_start=true", "target=macs", "budget=0.5"])
    validate(cfg)
    assert build_callback(cfg).spec.prune_on_fit_start is True
    with pytest.raises(ValueError, match=r"prune_on_fit_start=True .* needs schedule='one_shot'"):
        validate(compose_train(["schedule=agp", "prune_on_fit_start=true"]))


def test_a_budget_target_reaches_the_callback():
    cfg = compose_train(["target=macs", "budget=0.5", "ratio_overrides={model.layer4.*: 0.2}"])
    validate(cfg)
    callback = build_callback(cfg)
    spec = callback.spec
    assert (spec.target, spec.budget, spec.ratio_overrides) == ("macs", 0.5, {"model.layer4.*": 0.2})


def test_a_missing_checkpoint_is_refused_before_training(tmp_path):
    cfg = compose_train([*QUICK, f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(ValueError, match="ckpt_path=.*nope.ckpt.* is not a file"):
        run_training(cfg, tmp_path)
    assert not (tmp_path / "pruned_model.pt").exists()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = compose_train([*QUICK, "epochs=3", "ratio=0.5", "schedule=agp"])
    return out, cfg, run_training(cfg, out)


def test_a_digits_run_writes_a_loadable_pruned_model(digits_run):
    out, cfg, result = digits_run
    model = load_model(out / "pruned_model.pt").eval()
    dense = build_model(cfg.model, num_classes=10, in_channels=3)
    example = torch.zeros(1, 3, 16, 16)
    assert count_macs_params(model, example)[0] < count_macs_params(dense, example)[0]
    batch = torch.randn(8, 3, 16, 16)
    in_memory = result.module.model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), in_memory(batch))


def test_a_digits_run_writes_its_summary_report_and_checkpoints(digits_run):
    out, _, result = digits_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_acc"] == pytest.approx(result.val_acc) and 0.3 < summary["val_acc"] <= 1.0
    assert summary["params"]["pruned"] < summary["params"]["dense"]
    assert summary["macs"]["ratio"] < 1.0 and summary["input_shape"] == [3, 16, 16]
    assert set(summary["cpu_latency"]) == {"batch_1", "batch_64"}
    assert summary["cpu_latency"]["batch_1"]["pruned_ms"] > 0
    assert summary["config"]["ratio"] == 0.5
    assert len(summary["epoch_seconds"]) == 3 and all(seconds > 0 for seconds in summary["epoch_seconds"])
    assert "TOTAL" in (out / "layer_report.txt").read_text()
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert any(p.name.startswith("best-") for p in (out / "checkpoints").iterdir())


def test_ckpt_path_resumes_a_run(digits_run, tmp_path):
    out, _, first = digits_run
    cfg = compose_train([*QUICK, "epochs=4", "ratio=0.5", "schedule=agp", "end_epoch=2",
                         f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"])
    resumed = run_training(cfg, tmp_path)
    # the first run's schedule was complete at epoch 1 (its default end_epoch): the resumed epoch 3 trains on
    assert [e["epoch"] for e in resumed.callback.events] == [0, 1]
    assert resumed.module.trainer.current_epoch == 4
    assert resumed.module.model.fc.in_features == first.module.model.fc.in_features
    assert (tmp_path / "pruned_model.pt").exists()


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> Path:
    from fixtures_cifar import make_cifar_archive

    return make_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar10-jpg.tar.gz", n_train=4, n_test=2)


def cifar_overrides(root: Path, archive: Path) -> list[str]:
    return ["data=cifar10", f"data.root={root}", f"data.archive={archive}", "data.download=false",
            "data.num_workers=0", "data.batch_size=16", "latency_repeats=2", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu"]


def test_cifar10_with_resnet20_trains_prunes_and_saves_a_working_model(cifar_archive, tmp_path):
    cfg = compose_train([*cifar_overrides(tmp_path / "cifar10", cifar_archive), "model=resnet20", "epochs=2",
                         "ratio=0.4", "schedule=agp", "data.train_subset=20"])
    result = run_training(cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == ["test", "train"]  # the archive, extracted
    assert len(result.module.trainer.datamodule.train_dataset) == 20
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["input_shape"] == [3, 32, 32] and summary["params"]["dense"] == 272_474
    assert 0.25 < summary["macs"]["ratio"] < 0.5  # 40% of the channels: about (1 - 0.4)² of the MACs
    model = load_model(tmp_path / "run" / "pruned_model.pt").eval()
    assert type(model).__name__ == "CifarResNet" and model.layer3[0].conv2.out_channels < 64
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train_subset=5", r"train_subset=5 is invalid; it must be null .* \[10, 50000\]"),
        ("data.val_subset=0", r"val_subset=0 is invalid; it must be null .* \[10, 10000\]"),
        ("data.archive=/nowhere/cifar.tar.gz", r"CIFAR-10 is not available: download=False.*'/nowhere/cifar.tar.gz'"),
    ],
)
def test_bad_cifar10_settings_fail_before_training(cifar_archive, tmp_path, override, message):
    cfg = compose_train([*cifar_overrides(tmp_path / "cifar10", cifar_archive), "model=resnet20", override])
    with pytest.raises(Exception, match=message):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cifar10").exists()


def _run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_sweep_writes_one_row_per_job_and_the_plot_and_survives_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = _run_script(["-m", *QUICK, "epochs=1", "ratio=0.3", "start_epoch=0,5", "criterion=l1",
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "sweep_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    ok, failed = rows
    assert "start_epoch=0" in ok["overrides"] and not ok["error"] and float(ok["macs_ratio"]) < 1.0
    assert "start_epoch=5" in failed["overrides"] and "start_epoch=5 is invalid" in failed["error"]
    assert (sweep / "sweep_pareto.png").stat().st_size > 1000


def test_the_script_runs_from_the_repository_root_without_changing_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = _run_script([*QUICK, "epochs=1", f"hydra.run.dir={run_dir}"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final val accuracy" in result.stdout
    assert (run_dir / "pruned_model.pt").exists() and (run_dir / "summary.json").exists()
    assert not (ROOT / "lightning_logs").exists()


@pytest.mark.slow
def test_trainer_ddp_leaves_one_set_of_outputs_in_one_run_directory(tmp_path):
    runs = tmp_path / "outputs"
    result = _run_script([*QUICK, "trainer=ddp", "trainer.devices=2", "epochs=2", "ratio=0.3",
                          f"hydra.run.dir={runs / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.parent.name for p in runs.rglob("pruned_model.pt")] == ["run"]
    assert [p.parent.name for p in runs.rglob("summary.json")] == ["run"]
    assert sorted(p.name for p in runs.iterdir()) == ["run"]
    summary = json.loads((runs / "run" / "summary.json").read_text())
    assert summary["config"]["trainer"]["strategy"] == "ddp" and summary["macs"]["ratio"] < 1.0


@pytest.mark.slow
def test_trainer_ddp_in_a_multirun_spawns_ranks_and_saves_the_pruned_model(tmp_path):
    sweep = tmp_path / "sweep"
    result = _run_script(["-m", *QUICK, "trainer=ddp", "epochs=2", "ratio=0.3", f"hydra.sweep.dir={sweep}"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert "error" not in summary, f"{summary['error']}\n{result.stderr[-3000:]}"  # a multirun job's failure
    assert summary["config"]["trainer"]["strategy"] == "ddp_spawn"
    model = load_model(sweep / "0" / "pruned_model.pt")
    macs = count_macs_params(model, torch.zeros(1, 3, 16, 16))[0]
    assert macs == summary["macs"]["pruned"] < summary["macs"]["dense"]


def test_a_sharding_strategy_is_refused_before_anything_is_built(tmp_path):
    cfg = compose_train([*QUICK, "+trainer.strategy=fsdp"])
    with pytest.raises(ValueError, match="does not support the strategy 'fsdp'"):
        run_training(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_distill_enabled_adds_a_distillation_callback_that_trains(tmp_path):
    from lightning.pytorch.callbacks import Callback

    from lightning_prune import DistillationCallback

    seen: dict = {}

    class Probe(Callback):
        def on_train_end(self, trainer, pl_module):  # noqa: ANN001
            seen["distill"] = [c for c in trainer.callbacks if isinstance(c, DistillationCallback)]
            seen["logged"] = float(trainer.callback_metrics["distill/loss"])

    cfg = compose_train([*QUICK, "epochs=2", "ratio=0.5", "schedule=one_shot", "end_epoch=0", "distill.enabled=true",
                         "distill.temperature=2.0", "distill.weight=0.7"])
    run_training(cfg, tmp_path, callbacks=[Probe()])
    (callback,) = seen["distill"]
    assert (callback.spec.temperature, callback.spec.weight, callback.spec.student) == (2.0, 0.7, "model")
    assert seen["logged"] > 0  # the term was computed and logged while the pruned student trained
