"""Does 2:4 sparsity make inference faster? Dense and 2:4 semi-structured ``Linear`` stacks timed side by side.

For each shape, an MLP of ``Linear`` layers (float16, on the GPU) is made 2:4 sparse with the engine's masks
(:func:`~lightning_prune.engine.sparsity.compute_masks`, granularity ``"2:4"``), a copy is converted with
:func:`~lightning_prune.engine.semi_structured.to_semi_structured` (``torch.sparse.to_sparse_semi_structured``),
the outputs are compared, and both are timed interleaved (A B A B ...). Each row reports the median of the
per-pair ratios sparse / dense and ``speedup = 1 / ratio``.

Semi-structured sparse tensors need an NVIDIA GPU with sparse tensor cores (compute capability 8.0 or later).
Without one the script says so ("no CUDA"), writes that into the JSON and exits 0:

    python scripts/bench_semi_structured.py --out scripts/results/semi_structured.json
    python scripts/bench_semi_structured.py --smoke --out /tmp/semi_structured.json     # seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import RESULTS_DIR, machine_info, markdown_table, write_json  # noqa: E402

from lightning_prune.engine.latency import pairwise_latencies, pairwise_ratio  # noqa: E402
from lightning_prune.engine.semi_structured import to_semi_structured  # noqa: E402
from lightning_prune.engine.sparsity import compute_masks, nm_pattern_holds  # noqa: E402

# (features, hidden, layers, tokens): transformer-MLP-like shapes
SHAPES = [(1024, 4096, 2, 2048), (4096, 16384, 2, 4096), (8192, 8192, 2, 8192)]
SMOKE_SHAPES = [(256, 512, 2, 256)]
HEADERS = ["features", "hidden", "layers", "tokens", "dense ms", "2:4 ms", "ratio (IQR)", "speedup", "max |diff|"]


def gpu_problem() -> str | None:
    """Why this machine cannot run semi-structured sparsity, or None."""
    if not torch.cuda.is_available():
        return "no CUDA: semi-structured (2:4) sparse tensors need an NVIDIA GPU; nothing was measured"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return f"the GPU has compute capability {major}.{minor}; 2:4 sparse tensor cores need 8.0 or later"
    return None


def mlp(features: int, hidden: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, features)]
        if i < layers - 1:
            blocks.append(nn.GELU())
    return nn.Sequential(*blocks)


@torch.no_grad()
def two_four(model: nn.Module) -> nn.Module:
    """``model`` with every Linear weight masked to 2:4 by magnitude (the engine's masks)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    masks = compute_masks({n: m.weight for n, m in linears.items()}, 0.5, "2:4", "local")
    for name, module in linears.items():
        module.weight.mul_(masks[name])
        assert nm_pattern_holds(module.weight, 2, 4), name
    return model


def measure(shape: tuple[int, int, int, int], repeats: int) -> dict[str, Any]:
    features, hidden, layers, tokens = shape
    torch.manual_seed(0)
    dense = two_four(mlp(features, hidden, layers)).half().cuda().eval()
    sparse = copy.deepcopy(dense)
    converted = to_semi_structured(sparse)
    if converted.skipped:
        raise RuntimeError(f"layers left dense: {converted.skipped}")
    x = torch.randn(tokens, features, dtype=torch.float16, device="cuda")
    with torch.inference_mode():
        diff = float((dense(x) - sparse(x)).abs().max())
    dense_t, sparse_t = pairwise_latencies([dense, sparse], x, repeats=repeats, warmup=5)
    stats = pairwise_ratio(dense_t, sparse_t)
    return {
        "features": features, "hidden": hidden, "layers": layers, "tokens": tokens,
        "dense_ms": 1e3 * sorted(dense_t)[len(dense_t) // 2], "sparse_ms": 1e3 * sorted(sparse_t)[len(sparse_t) // 2],
        "ratio": stats.median, "ratio_q1": stats.q1, "ratio_q3": stats.q3, "speedup": 1.0 / stats.median,
        "max_abs_diff": diff, "converted": converted.converted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS_DIR / "semi_structured.json"))
    parser.add_argument("--smoke", action="store_true", help="one small shape, few repeats")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    payload: dict[str, Any] = {"machine": machine_info(), "rows": []}
    problem = gpu_problem()
    if problem is not None:
        payload.update(cuda=torch.cuda.is_available(), measured=False, reason=problem)
        write_json(args.out, payload)
        print(problem)
        return 0
    payload.update(cuda=True, measured=True, gpu=torch.cuda.get_device_name(0))
    for shape in SMOKE_SHAPES if args.smoke else SHAPES:
        payload["rows"].append(measure(shape, 5 if args.smoke else args.repeats))
        write_json(args.out, payload)
    print(markdown_table(HEADERS, [
        [r["features"], r["hidden"], r["layers"], r["tokens"], r["dense_ms"], r["sparse_ms"],
         f"{r['ratio']:.3f} ({r['ratio_q1']:.3f}-{r['ratio_q3']:.3f})", r["speedup"], r["max_abs_diff"]]
        for r in payload["rows"]
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
