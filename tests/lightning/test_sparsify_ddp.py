"""SparsifyCallback under two-process gloo DDP: rank 0 decides the masks, every rank applies the same ones.

The run goes through ``tests/sparsify_ddp_script.py`` in a subprocess, as in ``test_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sparsify_ddp_script import EPOCHS, run

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[1] / "sparsify_ddp_script.py"
LAUNCH_ENV_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


def records(out: Path, world_size: int) -> list[dict]:
    paths = sorted(out.glob("rank*.json"))
    assert [p.name for p in paths] == [f"rank{r}.json" for r in range(world_size)]
    return [json.loads(p.read_text()) for p in paths]


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_masks_and_weights(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--strategy", "ddp", "--devices", "2", "--out", str(ddp)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, f"ddp run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    rank0, rank1 = records(ddp, 2)
    for rank, record in enumerate((rank0, rank1)):
        assert record["rank"] == rank and record["world_size"] == 2
        assert Path(record["lightning_prune"]).resolve().is_relative_to(REPO)
    # the premise: different data on each rank, and a random criterion seeded differently on each rank
    assert all(a != b for a, b in zip(rank0["first_batch"], rank1["first_batch"]))
    assert len(rank0["masks"]) == EPOCHS and rank0["masks"][-1]
    assert rank0["masks"] == rank1["masks"]  # the same masks after every step
    assert rank0["params"] == rank1["params"] and rank0["final_params"] == rank1["final_params"]
    assert rank0["sparsity"] == rank1["sparsity"] and rank0["sparsity"][-1] == pytest.approx(0.6, abs=1e-3)

    # they are rank 0's choice: random scores depend on the seed alone, and one process seeded as rank 0 (100)
    # draws the same first masks (rank 1's own seed, 101, would draw others)
    single = tmp_path / "single"
    single.mkdir()
    run(str(single))
    assert records(single, 1)[0]["masks"][0] == rank0["masks"][0]
