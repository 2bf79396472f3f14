"""PruningCallback under DDP: identical ranks, a live DDP wrapper after each prune, refused set-ups.

The two-process runs go through ``tests/ddp_script.py`` in a subprocess. Lightning's ``strategy="ddp"``
launcher re-runs the script for rank 1, and a subprocess also keeps process groups out of this pytest
process. Each run fits with both criteria, and every rank writes one JSON record per criterion (see the
script's docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from conftest import PlainNet, quiet_trainer, random_loader
from ddp_script import CONTEXT, END_EPOCH, EPOCHS, FIT_START_SUFFIX, SPARSE_TRAINING, run
from lightning.pytorch.callbacks import StochasticWeightAveraging
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lightning_prune import PruningCallback
from lightning_prune.app.module import ClassifierModule
from lightning_prune.distributed import check_strategy_supported

try:  # Lightning >= 2.6
    from lightning.pytorch.callbacks import EMAWeightAveraging
except ImportError:  # pragma: no cover
    EMAWeightAveraging = None

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[1] / "ddp_script.py"
CRITERIA = tuple(CONTEXT)  # taylor (global ranking), random (local), l2 pruned at fit start
LAUNCH_ENV_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


def read_records(out: Path, criterion: str, world_size: int) -> list[dict]:
    paths = sorted(out.glob(f"{criterion}_rank*.json"))
    assert [p.name for p in paths] == [f"{criterion}_rank{r}.json" for r in range(world_size)]
    return [json.loads(p.read_text()) for p in paths]


def launch(strategy: str, out: Path, devices: int = 2) -> str:
    """Run ddp_script.py in a fresh interpreter that imports this checkout's lightning_prune; return its output."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, str(SCRIPT), "--strategy", strategy, "--devices", str(devices), "--out", str(out)]
    proc = subprocess.run(
        [*command, *CRITERIA], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{strategy} run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, dict]:
    """The same configuration on one process: the reference schedule."""
    out = tmp_path_factory.mktemp("single")
    for criterion in CRITERIA:
        run(criterion, str(out))
    return {c: read_records(out, c, 1)[0] for c in CRITERIA}


def reference_steps(single_process: dict[str, dict], criterion: str) -> int:
    """Optimizer steps of one rank in the sparse-training window: half the single process's (half the data)."""
    return single_process[criterion]["sparse_steps"] // 2


@pytest.fixture(scope="module", params=["ddp", "ddp_spawn"])
def ddp_run(request, tmp_path_factory) -> tuple[str, Path, str]:
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, launch(request.param, out)


@pytest.mark.slow
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_rank_prunes_the_same_channels_and_keeps_synchronising(ddp_run, criterion, single_process):
    strategy, out, output = ddp_run
    rank0, rank1 = read_records(out, criterion, 2)
    for rank, record in enumerate((rank0, rank1)):
        assert record["rank"] == rank and record["world_size"] == 2
        assert Path(record["lightning_prune"]).resolve().is_relative_to(REPO), record["lightning_prune"]
        assert record["wrapper"] == ["DistributedDataParallel"] * EPOCHS, record["wrapper"]
    # the premise: the ranks saw different batches, so unsynchronised gradients would drift apart
    for epoch, (a, b) in enumerate(zip(rank0["first_batch"], rank1["first_batch"])):
        assert a != b, f"{strategy}: both ranks saw the same first batch in epoch {epoch}"

    # same channels: same widths, and Adam's moments (never broadcast by DDP) sliced alike, after every prune
    assert rank0["widths"] == rank1["widths"]
    assert rank0["optimizer"] == rank1["optimizer"], (
        f"{strategy}/{criterion}: the ranks' Adam moments differ after a prune: different channels were pruned, "
        "or gradients stopped synchronising"
    )
    assert rank0["params"] == rank1["params"]
    # with sparse training every rank adds the same regularisation gradient at every optimizer step
    if SPARSE_TRAINING[criterion]:
        assert rank0["sparse_steps"] == rank1["sparse_steps"] == reference_steps(single_process, criterion) > 0
    # gradients kept synchronising after the last prune (epoch 3 trains the pruned model on different data)
    assert rank0["final_params"] == rank1["final_params"], f"{strategy}/{criterion}: weights diverged"

    # the schedule is that of a single-process run
    reference = single_process[criterion]
    assert rank0["kept"] == reference["kept"]
    # ResidualNet has 40 prunable channels: 16 in the residual group, 24 in the block
    if criterion.endswith(FIT_START_SUFFIX):  # pruned once before epoch 0: every epoch trained the pruned model
        assert reference["kept"] == [reference["kept"][0]] * EPOCHS and reference["kept"][0] < 40
        # to a MACs budget with round_to: rank 0 put units back after the grid step, the other rank replayed it
        assert rank0["units"] == reference["units"] > 0
    else:  # it pruned in several steps
        assert reference["kept"][END_EPOCH] < reference["kept"][0] < 40
    if CONTEXT[criterion] == "local":  # per-layer widths follow from the schedule alone
        assert rank0["widths"] == reference["widths"]

    launcher = json.loads((out / f"{criterion}_launcher.json").read_text())
    spawn_warning = "At the end of fit, Lightning copies rank 0's weights back"
    if strategy == "ddp":  # the launching process is rank 0: its model object is the pruned, trained one
        assert launcher["after_fit"] == rank0["final_params"]
        assert launcher["widths"] == rank0["widths"][-1]
        assert spawn_warning not in output
    else:  # Lightning cannot copy pruned weights back from spawned ranks: the model object stays untouched
        assert launcher["after_fit"] == launcher["before_fit"]
        assert spawn_warning in output


def test_fsdp_and_deepspeed_are_refused_with_a_clear_error():
    supported = "Supported strategies: auto (one device), single_device, ddp, ddp_spawn"
    with pytest.raises(ValueError, match="strategy FSDPStrategy: FSDP flattens and shards parameters") as info:
        check_strategy_supported(FSDPStrategy())  # this torch build constructs it; Lightning needs a GPU to run it
    assert supported in str(info.value)
    with pytest.raises(ValueError, match=r"'fsdp_cpu_offload' \(FSDPStrategy\)"):
        check_strategy_supported("fsdp_cpu_offload")
    # DeepSpeedStrategy() needs the deepspeed package; the registry names the class without building it
    with pytest.raises(ValueError, match=r"'deepspeed_stage_2' \(DeepSpeedStrategy\): DeepSpeed partitions"):
        check_strategy_supported("deepspeed_stage_2")
    with pytest.raises(ValueError, match="'ddp_sharded' is unknown to Lightning"):
        check_strategy_supported("ddp_sharded")
    for ok in ("auto", "ddp", "ddp_spawn_find_unused_parameters_true", DDPStrategy(), SingleDeviceStrategy()):
        check_strategy_supported(ok)


class CountingModule(ClassifierModule):
    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)


AVERAGING = {"swa": partial(StochasticWeightAveraging, swa_lrs=0.01)}
if EMAWeightAveraging is not None:
    AVERAGING["ema"] = partial(EMAWeightAveraging, decay=0.9)


@pytest.mark.parametrize("averaging", list(AVERAGING.values()), ids=list(AVERAGING))
def test_weight_averaging_callbacks_are_refused_at_setup(averaging):
    CountingModule.steps = 0
    module = CountingModule(PlainNet(), num_classes=4)
    callback = averaging()
    trainer = quiet_trainer(max_epochs=2, callbacks=[PruningCallback(ratio=0.5), callback])
    with pytest.raises(ValueError, match=f"cannot run with the {type(callback).__name__} callback"):
        trainer.fit(module, random_loader())
    assert CountingModule.steps == 0  # refused before any training


def test_an_averaged_model_inside_the_module_is_refused():
    net = PlainNet()
    net.ema = AveragedModel(nn.Linear(2, 2))
    module = ClassifierModule(net, num_classes=4)
    trainer = quiet_trainer(max_epochs=1, callbacks=[PruningCallback(ratio=0.5)])
    with pytest.raises(ValueError, match="submodule 'model.ema' is a torch.optim.swa_utils.AveragedModel"):
        trainer.fit(module, random_loader())
