"""``scripts/bench_semi_structured.py`` runs here: without a suitable GPU it says so and writes that; with one
it measures (smoke size) and its JSON is consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_semi_structured_benchmark_measures_or_says_why_not(tmp_path):
    out = tmp_path / "semi.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_semi_structured.py"), "--smoke",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cuda"] == torch.cuda.is_available() and result["machine"]["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert result["measured"] is False and result["rows"] == []
        assert proc.stdout.startswith("no CUDA") and result["reason"].startswith("no CUDA")
        return
    if not result["measured"]:  # a GPU without sparse tensor cores
        assert "compute capability" in result["reason"]
        return
    (row,) = result["rows"]
    assert row["speedup"] == 1 / row["ratio"] and row["dense_ms"] > 0 and row["sparse_ms"] > 0
    assert row["max_abs_diff"] < 0.5 and row["converted"]
