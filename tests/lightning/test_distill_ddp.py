"""DistillationCallback under DDP (two CPU processes, gloo): every rank distils from rank 0's initial weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[1] / "distill_ddp_script.py"
LAUNCH_ENV_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.slow
def test_every_rank_builds_the_same_teacher_from_rank_zeros_weights(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"ddp run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["before_fit"] != rank1["before_fit"]  # the ranks started from different weights
    # the teacher was copied after DDP broadcast rank 0's weights: rank 0's initial weights, on every rank
    assert rank0["teacher_at_start"] == rank1["teacher_at_start"] == rank0["before_fit"]
    assert rank0["teacher_at_end"] == rank1["teacher_at_end"] == rank0["teacher_at_start"]
    assert rank0["student"] == rank1["student"]  # parameters; the gradients carried the term on both ranks
    assert not rank0["teacher_in_ddp"] and not rank1["teacher_in_ddp"]
    assert rank0["strategy_model"] == "DistributedDataParallel"
    assert rank0["distill_loss"] > 0
