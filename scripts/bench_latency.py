"""Is the pruned model really faster? Dense and pruned ResNets timed side by side (A B A B ...).

For every model, input size, batch size, ranking context (``global``/``local``), ``round_to`` and channel
ratio, a copy of the dense network is pruned with :class:`~lightning_prune.engine.pruner.ChannelPruner` (``l2``,
the head kept), and each row reports:

- ``macs_ratio`` and ``params_ratio`` (pruned / dense; torch-pruning's counter),
- ``latency_ratio``: the median over interleaved pairs of pruned time / dense time, with its quartiles,
- ``efficiency = macs_ratio / latency_ratio``: 1.0 means wall clock shrinks exactly as much as arithmetic.

Weights are the random initialisation (no pretrained weights offline); the global ranking then reflects
initialisation scales, not learned importance, so global rows show where a *ranking* leaves the network,
not where a trained one would. Rows are also timed under ``torch.compile`` (where it works on this CPU;
a failure is recorded, not fatal) and on CUDA when a GPU is present.

    python scripts/bench_latency.py --out scripts/results/latency.json       # full grid (long)
    python scripts/bench_latency.py --smoke --out /tmp/latency.json          # seconds
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    LATENCY_HEADERS,
    RESULTS_DIR,
    latency_cells,
    machine_info,
    markdown_table,
    pruned_copy,
    set_threads,
    write_json,
)
from torchvision.models import resnet18, resnet50  # noqa: E402

from lightning_prune.app.models import small_cnn  # noqa: E402
from lightning_prune.engine.latency import pairwise_latencies, pairwise_ratio  # noqa: E402
from lightning_prune.engine.report import count_macs_params  # noqa: E402

MODELS = {"resnet18": resnet18, "resnet50": resnet50, "small_cnn": lambda num_classes: small_cnn(num_classes, width=8)}
NUM_CLASSES = 37  # Oxford-IIIT Pets


def parse_round_to(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "1") else int(text)


def n_pairs(dense: Any, inputs: torch.Tensor, seconds: float, lo: int, hi: int) -> int:
    """How many A/B pairs fit in ``seconds``, judged from one dense pass, within [lo, hi]."""
    start = time.perf_counter()
    with torch.inference_mode():
        dense(inputs)
    if inputs.is_cuda:
        torch.cuda.synchronize()
    one = time.perf_counter() - start
    return max(lo, min(hi, math.ceil(seconds / max(2 * one, 1e-6))))


def time_row(dense: Any, pruned: Any, inputs: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    pairs = n_pairs(dense, inputs, args.seconds_per_row, args.min_pairs, args.max_pairs)
    dense_t, pruned_t = pairwise_latencies([dense, pruned], inputs, repeats=pairs, warmup=args.warmup)
    stats = pairwise_ratio(dense_t, pruned_t)
    return {
        "dense_ms": 1e3 * sorted(dense_t)[len(dense_t) // 2],
        "pruned_ms": 1e3 * sorted(pruned_t)[len(pruned_t) // 2],
        "latency_ratio": stats.median,
        "latency_ratio_q1": stats.q1,
        "latency_ratio_q3": stats.q3,
        "pairs": stats.n,
    }


def try_compile(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[Any, str | None]:
    """``torch.compile(model)`` warmed on ``inputs``, or the error message when it does not work here."""
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(inputs)
        return compiled, None
    except Exception as err:  # noqa: BLE001 - any failure means "does not work on this machine"
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def runnable(model: torch.nn.Module, backend: str, inputs: torch.Tensor, label: str, errors: list[str]) -> Any:
    """A copy of ``model`` on the inputs' device, compiled for ``backend="compile"``; None (and the error
    recorded) when compiling fails here."""
    copied = copy.deepcopy(model).to(inputs.device)
    if backend != "compile":
        return copied
    compiled, err = try_compile(copied, inputs)
    if err:
        errors.append(f"torch.compile {label}: {err}")
    return compiled


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    backends = args.backends or (
        ["eager"] + (["compile"] if args.compile else []) + (["cuda"] if torch.cuda.is_available() else [])
    )
    for name in args.models:
        dense = MODELS[name](num_classes=NUM_CLASSES).eval()
        variants = {
            (context, round_to, ratio): pruned_copy(
                dense, torch.zeros(1, 3, 64, 64), ratio, global_pruning=context == "global", round_to=round_to
            )
            for context in args.contexts
            for round_to in args.round_to
            for ratio in args.ratios
        }
        for size in args.sizes:
            example = torch.zeros(1, 3, size, size)
            dense_macs, dense_params = count_macs_params(dense, example)
            counts = {key: count_macs_params(model, example) for key, model in variants.items()}
            for batch in args.batches:
                for backend in backends:
                    if backend == "compile" and (name, size, batch) not in args.compile_configs:
                        continue
                    device = "cuda" if backend == "cuda" else "cpu"
                    inputs = torch.randn(batch, 3, size, size, device=device)
                    dense_run = runnable(dense, backend, inputs, f"{name}", errors)
                    if dense_run is None:
                        continue
                    for (context, round_to, ratio), model in variants.items():
                        if backend == "compile" and ratio not in args.compile_ratios:
                            continue
                        pruned = runnable(model, backend, inputs, f"{name} pruned", errors)
                        if pruned is None:
                            continue
                        macs, params = counts[(context, round_to, ratio)]
                        row = {
                            "model": name,
                            "size": size,
                            "batch": batch,
                            "backend": backend,
                            "context": context,
                            "round_to": round_to,
                            "ratio": ratio,
                            "channel_ratio": model.channel_ratio,
                            "macs_ratio": macs / dense_macs,
                            "params_ratio": params / dense_params,
                            **time_row(dense_run, pruned, inputs, args),
                        }
                        row["efficiency"] = row["macs_ratio"] / row["latency_ratio"]
                        rows.append(row)
                        print(
                            f"{name} {size}px b{batch} {backend} {context} round_to={round_to} r={ratio}: "
                            f"MACs {row['macs_ratio']:.3f} latency {row['latency_ratio']:.3f} "
                            f"eff {row['efficiency']:.2f}",
                            flush=True,
                        )
    return {
        "benchmark": "latency",
        "machine": machine_info(threads),
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "rows": rows,
        "at_2x": at_fraction(rows, 0.5),
        "errors": errors,
    }


def at_fraction(rows: list[dict[str, Any]], macs: float) -> list[dict[str, Any]]:
    """Per (model, size, batch, backend, context, round_to): the row whose MACs ratio is closest to ``macs``."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["model"], row["size"], row["batch"], row["backend"], row["context"], row["round_to"])
        if key not in best or abs(row["macs_ratio"] - macs) < abs(best[key]["macs_ratio"] - macs):
            best[key] = row
    return list(best.values())


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(LATENCY_HEADERS, latency_cells(rows))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny grid that runs in seconds (for the tests)")
    p.add_argument("--out", default=str(RESULTS_DIR / "latency.json"))
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], choices=sorted(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 64])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--contexts", nargs="+", default=["global", "local"], choices=["global", "local"])
    p.add_argument("--round-to", nargs="+", type=parse_round_to, default=[None, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed A/B rounds before timing")
    p.add_argument("--seconds-per-row", type=float, default=3.0, help="timing budget per row (sets the pairs)")
    p.add_argument("--min-pairs", type=int, default=5)
    p.add_argument("--max-pairs", type=int, default=40)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time torch.compile'd models for --compile-configs at --compile-ratios")
    p.add_argument("--compile-configs", nargs="+", default=["resnet18:64:1", "resnet18:64:32"],
                   help="model:size:batch triples timed under torch.compile (compiling is slow)")
    p.add_argument("--backends", nargs="+", choices=["eager", "compile", "cuda"], default=None,
                   help="default: eager, compile (unless --no-compile) and cuda when a GPU is present")
    p.add_argument("--compile-ratios", nargs="+", type=float, default=[0.4])
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.sizes, args.batches = ["small_cnn"], [32], [1, 4]
        args.ratios, args.contexts, args.round_to = [0.3, 0.5], ["global", "local"], [None, 8]
        args.min_pairs, args.max_pairs, args.warmup, args.seconds_per_row = 3, 3, 1, 0.0
        args.compile = False
    args.compile_configs = {(m, int(s), int(b)) for m, s, b in (c.split(":") for c in args.compile_configs)}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    result["config"]["compile_configs"] = sorted(":".join(map(str, c)) for c in args.compile_configs)
    print(table(result["rows"]))
    print("\nAt ~2x fewer MACs:\n" + table(result["at_2x"]))
    for err in result["errors"]:
        print("error:", err)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
