"""Which widths are fast? ResNet-20 (CIFAR, 32x32) built at hand-set widths, timed against the dense model.

A pruned model's latency follows the convolution kernels, not its MACs: a kernel library picks a different
algorithm per width, so removing channels can save much more or much less time than MACs. This script
measures that landscape on the machine it runs on, so that the frontier's latency efficiency (MACs ratio /
latency ratio) can be read against what any allocation of channels could reach:

- ``kernels``: one 3x3 conv (``c`` to ``c`` channels) at each stage's map size (32, 16, 8 pixels), ms at
  the batch;
- ``configs``: ResNet-20 with residual-stream widths ``stream`` and in-block widths ``inner`` per stage (every
  block of a stage alike), its MACs ratio, its latency ratio (median of interleaved pairs, A B A B ...) and
  its efficiency.

Timings keep freed buffers in the process (``lightning_prune.engine.latency.steady_allocator``, set by
``bench_common.set_threads``): with glibc's defaults the 2 MB activations of the 32x32 stage are mapped and
faulted in anew on most passes, which makes wide 32x32 layers look several times slower than they run in a
process that has been running a while.

    python scripts/bench_widths.py --out scripts/results/explore/widths_resnet20.json   # about 2 minutes
    python scripts/bench_widths.py --smoke --out /tmp/widths.json                       # seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    latency_vs_dense,
    machine_info,
    markdown_table,
    pyplot,
    save_figure,
    save_result,
    set_threads,
)

from lightning_prune.app.models import CifarBasicBlock, resnet20  # noqa: E402
from lightning_prune.engine.latency import measure_latency  # noqa: E402
from lightning_prune.engine.report import count_macs_params  # noqa: E402

DENSE = ((16, 32, 64), (16, 32, 64))
CONFIGS = [  # (stream widths, inner widths) per stage
    ((8, 16, 32), (8, 16, 32)), ((12, 24, 48), (12, 24, 48)), ((16, 32, 64), (8, 16, 32)),
    ((8, 16, 32), (16, 32, 64)), ((12, 32, 64), (12, 16, 32)), ((12, 32, 64), (12, 24, 32)),
    ((8, 24, 48), (8, 24, 48)), ((12, 16, 32), (12, 16, 32)), ((4, 32, 64), (12, 32, 64)),
    # the most efficient of ~100 stage-wise configurations between 0.28 and 0.56 MACs (steady allocator)
    ((4, 24, 64), (4, 24, 64)), ((4, 32, 64), (4, 32, 32)), ((8, 16, 64), (8, 16, 64)),
    ((8, 16, 64), (8, 32, 64)), ((8, 32, 32), (8, 32, 32)), ((16, 16, 16), (16, 16, 16)),
    ((4, 8, 64), (4, 8, 64)), ((8, 8, 64), (8, 8, 64)),
]
KERNEL_WIDTHS = (4, 8, 12, 16, 24, 32, 40, 48, 64)


def thinned_resnet20(stream: tuple[int, int, int], inner: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """ResNet-20 with residual-stream widths ``stream`` and in-block widths ``inner`` (per stage).

    >>> net = thinned_resnet20((8, 16, 32), (4, 8, 16))
    >>> net.layer2[0].conv1.out_channels, net.layer2[0].conv2.out_channels, net.fc.in_features
    (8, 16, 32)
    """
    net = resnet20(num_classes)
    net.conv1 = nn.Conv2d(3, stream[0], 3, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(stream[0])
    width = stream[0]
    for index, stage in enumerate((net.layer1, net.layer2, net.layer3)):
        for block_index in range(len(stage)):
            block = CifarBasicBlock(width, stream[index], stride=2 if index and not block_index else 1)
            block.conv1 = nn.Conv2d(width, inner[index], 3, stride=block.conv1.stride, padding=1, bias=False)
            block.bn1 = nn.BatchNorm2d(inner[index])
            block.conv2 = nn.Conv2d(inner[index], stream[index], 3, padding=1, bias=False)
            stage[block_index] = block
            width = stream[index]
    net.fc = nn.Linear(width, num_classes)
    return net.eval()


def kernel_ms(channels: int, size: int, batch: int, repeats: int) -> float:
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    return 1e3 * measure_latency(conv, torch.randn(batch, channels, size, size), repeats=repeats)


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    example, inputs = torch.randn(1, 3, 32, 32), torch.randn(args.batch, 3, 32, 32)
    sizes = {32: KERNEL_WIDTHS[:4], 16: KERNEL_WIDTHS[1:6], 8: KERNEL_WIDTHS[2:]}
    kernels = [{"size": size, "channels": c, "ms": kernel_ms(c, size, args.batch, args.repeats)}
               for size, widths in sizes.items() for c in (widths[:2] if args.smoke else widths)]
    dense = thinned_resnet20(*DENSE)
    dense_macs = count_macs_params(dense, example)[0]
    configs = []
    for stream, inner in CONFIGS[:2] if args.smoke else CONFIGS:
        model = thinned_resnet20(stream, inner)
        latency_ratio = latency_vs_dense(model, dense, inputs, args.pairs, warmup=3)[0]
        macs_ratio = count_macs_params(model, example)[0] / dense_macs
        configs.append({"stream": list(stream), "inner": list(inner), "macs_ratio": macs_ratio,
                        "latency_ratio": latency_ratio, "efficiency": macs_ratio / latency_ratio})
        print(f"stream {stream} inner {inner}: MACs {macs_ratio:.3f} latency {latency_ratio:.3f} "
              f"efficiency {macs_ratio / latency_ratio:.2f}", flush=True)
    return {"benchmark": "widths", "model": "resnet20", "batch": args.batch, "machine": machine_info(threads),
            "kernels": kernels, "configs": configs}


def plot(result: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in result["configs"]:
        ax.scatter(row["macs_ratio"], row["latency_ratio"], color="C0")
        ax.annotate(f"{row['stream']}/{row['inner']}", (row["macs_ratio"], row["latency_ratio"]), fontsize=6)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)  # efficiency 1
    ax.plot([0, 0.9], [0, 1], "k--", linewidth=0.8)  # efficiency 0.9
    ax.set(xlabel="MACs ratio", ylabel=f"latency ratio (batch {result['batch']})",
           title="ResNet-20 at hand-set widths (stream/inner)")
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="two configs, two kernel widths per size: seconds")
    p.add_argument("--out", default=str(RESULTS_DIR / "explore" / "widths_resnet20.json"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.pairs, args.repeats = 2, 3, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    save_result(result, args.out, plot)
    print(markdown_table(["stream", "inner", "MACs", "latency", "efficiency"],
                         [[r["stream"], r["inner"], r["macs_ratio"], r["latency_ratio"], r["efficiency"]]
                          for r in result["configs"]]))


if __name__ == "__main__":
    main()
