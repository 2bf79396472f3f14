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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


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
    model = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a whole nn.Module saved by save_model")
    return model
