"""Whole-model export: the pruned network saved as an ordinary PyTorch model, and measured.

A pruned network no longer matches its class's constructor, so it is saved whole (``torch.save(model)``),
not as a state_dict. Files are written to a temporary name and renamed, so an interrupted write never
leaves a broken file behind.

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.pt"
>>> save_model(torch.nn.Linear(2, 3), path)
>>> load_model(path).out_features
3
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import check_torch_file
from ..engine.latency import pairwise_latencies


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, lambda tmp: pathlib.Path(tmp).write_text("hi")); p.read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the whole ``model`` (structure and weights) atomically."""
    atomic_write(path, lambda tmp: torch.save(model, tmp))


def save_json(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a whole model saved by :func:`save_model` (e.g. a run's ``pruned_model.pt``).

    A whole model is a pickle of its classes, which ``weights_only=True`` refuses by design, so this uses
    ``weights_only=False``: unpickling can run arbitrary code. Load only files you trust. Checkpoints, by
    contrast, load with ``weights_only=True`` (see :mod:`lightning_prune.checkpoint`).
    """
    check_torch_file(path, "model_path")
    model = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a whole nn.Module saved by save_model")
    return model


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike, repeats: int = 20) -> dict:
    """Export ``model`` to ONNX at ``path`` (batch dimension dynamic), check it in onnxruntime against the
    PyTorch outputs, and time both at batch 1 on the CPU. Needs the ``onnx`` extra (onnx, onnxruntime).

    Returns ``{"path", "max_abs_diff", "onnxruntime_ms_batch_1", "pytorch_ms_batch_1"}``.
    """
    try:
        import onnxruntime  # noqa: PLC0415 - an optional extra
    except ImportError as err:
        raise ValueError("format=onnx needs onnxruntime: pip install 'lightning-prune[onnx]'") from err
    import numpy as np  # noqa: PLC0415


    model = model.cpu().eval()
    example = torch.randn(2, *input_shape)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}

    def write(tmp: str) -> None:
        # the TorchScript-based exporter: exact for these CNNs, and seconds faster than dynamo=True
        torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes)

    atomic_write(path, write)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.randn(3, *input_shape)  # another batch size than the export's: the batch axis is dynamic
    with torch.inference_mode():
        expected = model(check).numpy()
    got = session.run(None, {"input": check.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    if got.shape != expected.shape or diff > 1e-4 * max(1.0, scale):
        raise ValueError(f"the ONNX model at {path} does not reproduce the PyTorch outputs (max |diff| {diff:.3g})")
    one = torch.randn(1, *input_shape)
    torch_times, ort_times = pairwise_latencies(
        [model, lambda x: session.run(None, {"input": x.numpy()})], one, repeats=repeats
    )
    return {"path": str(path), "max_abs_diff": diff,
            "onnxruntime_ms_batch_1": statistics.median(ort_times) * 1e3,
            "pytorch_ms_batch_1": statistics.median(torch_times) * 1e3}
