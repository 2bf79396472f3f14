"""Shared by the coverage scripts: one model pruned inside a short fit, in a subprocess with a time limit.

Each model runs ``PruningCallback(ratio=0.5, schedule="linear", end_epoch=1)`` inside ``trainer.fit`` for two
epochs of one batch (random init, random images, SGD without momentum to keep memory low), and is recorded
as one of:

- ``prunes``: the fit completed, MACs went down and nothing was left out;
- ``prunes, layers left out``: the same, with layers left unpruned (named, with the reason);
- ``refused``: set-up or a pruning step refused the model with an error naming the cause (rolled back);
- ``failed``: anything else (a crash, a time-out, MACs not going down).

Results go to a JSON file, rewritten after every model, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRUNES, LEFT_OUT, REFUSED, FAILED = "prunes", "prunes, layers left out", "refused", "failed"


def run_one(build: Callable[[], Any], size: int, context: str) -> dict[str, Any]:
    """Build the model, prune it inside a fit; the record of what happened. ``size``: the image size, or
    minus the sequence length for a model of token ids (a Hugging Face model, called with ``input_ids``)."""
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_prune import PruningCallback, count_macs_params
    from lightning_prune.engine.pruner import NothingToPruneError
    from lightning_prune.engine.rollback import PruningStepError

    torch.set_num_threads(int(os.environ.get("COVERAGE_THREADS", "1")))
    pl.seed_everything(0, verbose=False)

    class Classifier(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.example_input_array = make_inputs(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(input_ids=x) if size < 0 else self.net(x)
            out = getattr(out, "logits", out)
            out = out[0] if isinstance(out, tuple) else out
            return out[:, -1] if out.dim() == 3 else out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x)[:, :4], y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    def make_inputs(n: int) -> torch.Tensor:
        return torch.randint(0, 100, (n, -size)) if size < 0 else torch.randn(n, 3, size, size)

    started = time.perf_counter()
    record: dict[str, Any] = {"context": context, "input": size}
    try:
        module = Classifier(build())
    except Exception as err:  # noqa: BLE001
        return {**record, "status": FAILED, "error": f"cannot build: {type(err).__name__}: {err}"}
    x = make_inputs(2)
    data = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=2)
    callback = PruningCallback(ratio=0.5, schedule="linear", end_epoch=1, context=context, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[callback],
    )  # fmt: skip
    dense = count_macs_params(module, module.example_input_array)[0]
    record["params_m"] = round(sum(p.numel() for p in module.parameters()) / 1e6, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, data)
        except (PruningStepError, NothingToPruneError, ValueError) as err:
            record.update(status=REFUSED, error=f"{type(err).__name__}: {str(err)[:600]}")
        except Exception as err:  # noqa: BLE001
            record.update(status=FAILED, error=f"{type(err).__name__}: {str(err)[:600]}",
                          trace=traceback.format_exc()[-1500:])  # fmt: skip
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["warnings"] = sorted({str(w.message)[:400] for w in caught if "PruningCallback" in str(w.message)})
    if "status" in record:
        return record
    macs = count_macs_params(module, module.example_input_array)[0]
    record["macs_ratio"] = round(macs / dense, 3)
    record["channel_ratio"] = round(callback.pruned_ratio, 3)
    record["left_out"] = callback.left_out + callback.unsafe_ignored
    if len(callback.events) != 2 or macs >= dense:
        record.update(status=FAILED, error=f"{len(callback.events)} prunes, MACs ratio {macs / dense:.3f}")
    else:
        record["status"] = LEFT_OUT if record["left_out"] else PRUNES
    return record


def main(models: dict[str, tuple[str, int]], default_out: str, description: str) -> None:
    """``models``: name -> (the dotted path of a build function taking no arguments, or a key for ``child``,
    input size). Runs each in a subprocess (``--child``) and writes the JSON summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(RESULTS_DIR / default_out))
    parser.add_argument("--models", nargs="*", help="a subset, by name")
    parser.add_argument("--contexts", nargs="*", default=["local"])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CONTEXT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import resource

        limit = int(float(os.environ.get("COVERAGE_MEMORY_GB", "10")) * 2**30)  # a model never takes the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        name, context = args.child
        print(json.dumps(run_one(models[name][0], models[name][1], context)), flush=True)
        return
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text())["models"] if out.exists() else {}
    names = args.models or list(models)
    for context in args.contexts:
        for name in names:
            key = name if context == "local" else f"{name} ({context})"
            started = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, sys.argv[0], "--child", name, context],
                    capture_output=True, text=True, timeout=args.timeout,
                )  # fmt: skip
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                record = json.loads(lines[-1]) if lines else {
                    "status": FAILED, "error": f"exit {proc.returncode}: {proc.stderr[-800:]}"}  # fmt: skip
            except subprocess.TimeoutExpired:
                record = {"status": FAILED, "error": f"timed out after {args.timeout:.0f}s", "context": context}
            record.setdefault("seconds", round(time.perf_counter() - started, 1))
            results[key] = record
            print(f"{key}: {record['status']} {record.get('macs_ratio', '')} {record.get('error', '')[:200]}",
                  flush=True)  # fmt: skip
            summary = {status: sum(r["status"] == status for r in results.values())
                       for status in (PRUNES, LEFT_OUT, REFUSED, FAILED)}  # fmt: skip
            summary["prune in a fit"] = summary[PRUNES] + summary[LEFT_OUT]
            summary["total"] = len(results)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"summary": summary, "models": results}, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary), flush=True)
