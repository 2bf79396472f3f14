"""Time and memory of building the dependency graph (``ChannelPruner``) on CPU, one-sample inputs.

For torchvision's resnet50 at 224x224 and timm's ViT-B/16 (``timm.models.vision_transformer.VisionTransformer``
with its defaults: 12 blocks, dim 768, 12 heads, 16x16 patches at 224x224, attention with its own qkv Linear).
Each measurement runs in a fresh process: the peak RSS increase is the highest RSS sampled every 5 ms during
the build minus the RSS before it (the model and inputs already allocated); "retained" is the RSS increase
still held once the build returned, with and without releasing the traced autograd graph
(:func:`lightning_prune.engine.compat.release_autograd`).

    python scripts/measure_graph_build.py            # prints a markdown table, writes scripts/results/graph_build.json
    python scripts/measure_graph_build.py --models resnet50 --out /tmp/graph_build.json     # one model
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "graph_build.json"


def _vmrss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rss_mib() -> float:
    """Resident memory now, after handing freed heap pages back to the OS (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return _vmrss()


def measure(model_name: str, release: bool) -> dict[str, float | str | bool]:
    """Build the graph once in this process and report time and memory."""
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models import resnet50

    import lightning_prune.engine.pruner as pruner_module
    from lightning_prune.engine.attention import attention_kwargs
    from lightning_prune.engine.pruner import ChannelPruner, find_output_layers

    torch.manual_seed(0)
    model = resnet50(num_classes=1000) if model_name == "resnet50" else VisionTransformer()
    inputs = torch.randn(1, 3, 224, 224)
    output_layers = [model.get_submodule(n) for n in find_output_layers(model, inputs)]
    if not release:
        pruner_module.release_autograd = lambda graph: 0
    gc.collect()
    before = rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # ru_maxrss would include earlier peaks (the forward pass above)
        while not done.wait(0.005):
            peak[0] = max(peak[0], _vmrss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    pruner = ChannelPruner(model, inputs, ignored_layers=output_layers, **attention_kwargs(model, {}))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _vmrss())
    gc.collect()
    retained = rss_mib() - before
    return {
        "model": model_name,
        "release_autograd": release,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": round(seconds, 2),
        "graph_build_s": round(pruner.build_seconds, 2),
        "peak_rss_increase_MiB": round(peak[0] - before, 1),
        "retained_rss_MiB": round(retained, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "RELEASE"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b16"], choices=["resnet50", "vit_b16"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "1")))
        return
    rows = []
    for model_name in args.models:
        for release in (True, False):
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", model_name, str(int(release))]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_threads": args.threads, "rows": rows}, indent=1) + "\n")
    print("| model | params (M) | autograd graph released | build (s) | peak RSS increase (MiB) | retained (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_M']:.1f} | {'yes' if r['release_autograd'] else 'no'} | {r['build_s']} "
            f"| {r['peak_rss_increase_MiB']} | {r['retained_rss_MiB']} |"
        )


if __name__ == "__main__":
    main()
