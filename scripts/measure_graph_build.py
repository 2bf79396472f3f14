"""Time and memory of building the dependency graph (``ChannelPruner``) on CPU, one-sample inputs.

For resnet50 at 224x224 (``lightning_prune.models``) and a ViT-B-sized model (12 blocks, dim 768, 12 heads,
16x16 patches at 224x224, timm-style attention with its own qkv Linear, defined here). Each measurement runs
in a fresh process: the peak RSS increase is the highest RSS sampled every 5 ms during the build minus the
RSS before it (the model and inputs already allocated); "retained" is the RSS increase still held once the
build returned, with and without releasing the traced autograd graph
(:func:`lightning_prune.graph_build.release_autograd`).

    python scripts/measure_graph_build.py            # prints a markdown table, writes scripts/results/graph_build.json
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
from torch import nn

RESULTS = Path(__file__).parent / "results" / "graph_build.json"


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT-B/16: 12 blocks, dim 768, 12 heads, 224x224 images, 1000 classes (86M parameters)."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, image: int = 224, patch: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


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
    import lightning_prune.pruner as pruner_module
    from lightning_prune.attention import attention_kwargs
    from lightning_prune.models import resnet50
    from lightning_prune.pruner import ChannelPruner, find_output_layers

    torch.manual_seed(0)
    model = resnet50(num_classes=1000) if model_name == "resnet50" else ViT()
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "1")))
        return
    rows = []
    for model_name in ("resnet50", "vit_b16"):
        for release in (True, False):
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", model_name, str(int(release))]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu_threads": args.threads, "rows": rows}, indent=1) + "\n")
    print("| model | params (M) | autograd graph released | build (s) | peak RSS increase (MiB) | retained (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_M']:.1f} | {'yes' if r['release_autograd'] else 'no'} | {r['build_s']} "
            f"| {r['peak_rss_increase_MiB']} | {r['retained_rss_MiB']} |"
        )


if __name__ == "__main__":
    main()
