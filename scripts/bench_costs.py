"""Are timed channel costs repeatable? ``measure_costs`` called several times on the same model, layer by layer.

A cost-aware ranking (``channel_cost="latency"`` or ``"latency_per_mac"``) divides every group's scores by
what removing one of its channels saves. If two calls on the same model disagree by more than the layers
differ, the ranking is drawn by chance. This script calls ``measure_costs(model, x, kind, unit=...)``
``--calls`` times and reports, per conv and linear layer, the output-side cost per channel of each call,
their spread (largest / smallest) and the cost per MAC, with:

- ``--spans shares`` (the library's): each side timed about a quarter and a half narrower, in whole units;
- ``--spans one_two_units`` (the earlier rule, for comparison): one and two units narrower.

    python scripts/bench_costs.py --model resnet18 --out scripts/results/explore/costs_resnet18.json
    python scripts/bench_costs.py --model resnet18 --spans one_two_units --out /tmp/costs_units.json
    python scripts/bench_costs.py --smoke --out /tmp/costs.json                                   # seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    machine_info,
    markdown_table,
    pyplot,
    save_figure,
    save_result,
    set_threads,
)
from frontier_pieces import make_model  # noqa: E402

from lightning_prune.engine import cost  # noqa: E402

SPANS = ("shares", "one_two_units")


def one_and_two_units(width: int, unit: int) -> list[int]:
    """The earlier rule: one and two units removed, leaving at least one channel."""
    return [k for k in (1, 2) if width - k * unit >= 1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    model = make_model(args.model).eval()
    x = torch.zeros(1, 3, args.size, args.size)
    names = {module: name for name, module in model.named_modules()}
    if args.spans == "one_two_units":
        cost.units_removed = one_and_two_units  # this process only: the rule this script compares against
    calls = [cost.measure_costs(model, x, args.kind, unit=args.unit) for _ in range(args.calls)]
    layers = []
    for module in calls[0]:
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        out_us = [1e6 * c[module].out for c in calls]
        per_mac_ps = [1e12 * c[module].out / c[module].macs_out if c[module].macs_out else None for c in calls]
        layers.append({"layer": names[module], "out_us": out_us, "spread": max(out_us) / min(out_us),
                       "out_ps_per_mac": per_mac_ps})
    return {"benchmark": "costs", "model": args.model, "kind": args.kind, "unit": args.unit, "spans": args.spans,
            "batch": cost.COST_BATCH, "calls": args.calls, "machine": machine_info(threads), "layers": layers,
            "median_spread": statistics.median(row["spread"] for row in layers),
            "max_spread": max(row["spread"] for row in layers)}


def plot(result: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for call in range(result["calls"]):
        ax.plot([row["out_us"][call] for row in result["layers"]], "o-", label=f"call {call + 1}", markersize=3)
    ax.set_xticks(range(len(result["layers"])), [row["layer"] for row in result["layers"]], rotation=90, fontsize=6)
    ax.set(yscale="log", ylabel="µs saved per output channel",
           title=f"{result['model']}: {result['kind']}, unit={result['unit']}, spans {result['spans']}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="resnet18 (torchvision) or resnet<N> (CIFAR)")
    p.add_argument("--kind", default="latency_per_mac", choices=["latency", "latency_per_mac"])
    p.add_argument("--unit", type=int, default=8, help="round_to")
    p.add_argument("--spans", default="shares", choices=SPANS)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="a two-conv model, two calls: seconds")
    p.add_argument("--out", default=str(RESULTS_DIR / "explore" / "costs_resnet18.json"))
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.calls, args.size = "tiny", 2, 16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    save_result(result, args.out, plot)
    print(markdown_table(["layer", "µs per output channel, each call", "spread", "ps per MAC, each call"],
                         [[r["layer"], " / ".join(f"{v:.1f}" for v in r["out_us"]), r["spread"],
                           " / ".join(f"{v:.0f}" if v is not None else "-" for v in r["out_ps_per_mac"])]
                          for r in result["layers"]]))
    print(f"median spread {result['median_spread']:.2f}, largest {result['max_spread']:.2f}")


if __name__ == "__main__":
    main()
