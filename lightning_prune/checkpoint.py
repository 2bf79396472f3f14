"""Checkpoint replay: a pruned Lightning checkpoint loads everywhere an ordinary one does.

A pruned model's checkpoint holds smaller tensors than a freshly built module, so ``load_state_dict``
fails with size mismatches (Lightning's ``ModelPruning`` has the same gap). The callback therefore stores a
*pruning record* in every checkpoint under ``checkpoint["lightning_prune"]``: torch-pruning's pruning
history (module names, a flag and channel indices: plain data) and the one-sample example inputs needed to
rebuild the dependency graph. Replaying the history on a fresh module reproduces the pruned structure
exactly; then the weights load as usual. Everything in the record is plain data or tensors, so checkpoints
load with ``torch.load(path, weights_only=True)``.

>>> import torch
>>> from lightning_prune.engine.pruner import ChannelPruner
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> pruner = ChannelPruner(net, torch.zeros(1, 3, 4, 4), ignored_layers=[net[2]])
>>> _ = pruner.prune_to(0.5)
>>> ckpt = {"state_dict": net.state_dict(), RECORD_KEY: make_record(pruner.history(), torch.zeros(1, 3, 4, 4))}
>>> fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> _ = restore_pruned(fresh, ckpt)
>>> fresh[0].out_channels, bool(torch.equal(fresh[0].weight, net[0].weight))
(4, True)
"""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .engine.inputs import map_tensors
from .engine.pruner import ChannelPruner, Restructurer, plain_history
from .lightning_compat import loaded_checkpoint

RECORD_KEY = "lightning_prune"
RECORD_VERSION = 1


def make_record(history: Sequence[Sequence], example_inputs: Any) -> dict[str, Any]:
    """The pruning record stored in a checkpoint: plain history plus CPU example inputs.

    >>> make_record([("conv", True, [1])], torch.zeros(1, 3))["history"]
    [['conv', True, [1]]]
    """
    return {
        "version": RECORD_VERSION,
        "history": plain_history(history),
        "example_inputs": map_tensors(lambda t: t.detach().cpu(), example_inputs),
    }


def check_torch_file(path: str | os.PathLike, what: str = "file") -> None:
    """Raise a clear ValueError if ``path`` is not a complete file written by ``torch.save`` (a zip archive):
    a truncated or foreign file, instead of torch's raw zip error.

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "bad.ckpt"; _ = bad.write_bytes(b"not a checkpoint")
    >>> check_torch_file(bad, "ckpt_path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ckpt_path=... is not a complete file written by torch.save (truncated or corrupt?)...
    """
    # opening reads only the zip's central directory, written last: a truncated file has none. (testzip()
    # would CRC-check every entry, reading a large checkpoint once more before torch.load reads it again.)
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{what}={str(path)!r} is not a complete file written by torch.save (truncated or corrupt?): {err}"
        ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: pruned checkpoints hold no pickled objects.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.ckpt"; torch.save({"state_dict": {}}, path)
    >>> load_checkpoint(path)
    {'state_dict': {}}
    """
    check_torch_file(path, "checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def pruning_record(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's pruning record, or None for a checkpoint of an unpruned run.

    >>> pruning_record({"state_dict": {}}) is None
    True
    """
    record = checkpoint.get(RECORD_KEY)
    if record is None or not record.get("history"):
        return None
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"unsupported pruning record version {record.get('version')!r}; expected {RECORD_VERSION}")
    return record


def _state_prefix(module: nn.Module, state_dict: Mapping[str, Any]) -> str:
    """The prefix that maps ``state_dict``'s keys onto ``module``'s (``"model."`` for a LightningModule's
    checkpoint loaded into the plain network it wraps; ``""`` for the same module)."""
    own = set(module.state_dict())
    best, best_hits = "", sum(k in own for k in state_dict)
    for key in state_dict:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i]) + "."
            hits = sum(k[len(prefix):] in own for k in state_dict if k.startswith(prefix))
            if hits > best_hits:
                best, best_hits = prefix, hits
    return best


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def check_same_architecture(module: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first key that one side has and the other lacks.

    >>> check_same_architecture(torch.nn.Linear(2, 2), {"weight": 0})
    Traceback (most recent call last):
    ...
    ValueError: the checkpoint does not match the module's architecture: first key only in the module: 'bias'
    """
    own = list(module.state_dict())
    own_set, theirs = set(own), set(state_dict)
    only_module = [k for k in own if k not in theirs]
    only_ckpt = [k for k in state_dict if k not in own_set]
    if only_module or only_ckpt:
        where = (
            f"first key only in the module: {only_module[0]!r}"
            if only_module
            else f"first key only in the checkpoint: {only_ckpt[0]!r}"
        )
        raise ValueError(f"the checkpoint does not match the module's architecture: {where}")


def first_shape_mismatch(module: nn.Module, state_dict: Mapping[str, Any]) -> str | None:
    """The first tensor whose shape differs between ``module`` and ``state_dict``, described; else None."""
    for key, tensor in module.state_dict().items():
        other = state_dict.get(key)
        if torch.is_tensor(other) and tuple(other.shape) != tuple(tensor.shape):
            return f"{key!r}: module {tuple(tensor.shape)} vs checkpoint {tuple(other.shape)}"
    return None


def _replay(module: nn.Module, record: Mapping[str, Any], prefix: str) -> None:
    history = [[r[0][len(prefix) :], *r[1:]] for r in record["history"]]
    if prefix and any(not r[0].startswith(prefix) for r in record["history"]):
        raise ValueError(f"the pruning record names layers outside {prefix!r}; it does not match the module")
    inputs = record["example_inputs"]
    try:
        pruner = Restructurer(module, inputs)
    except Exception as err:
        raise ValueError(
            f"cannot rebuild the dependency graph of {type(module).__name__} with the checkpoint's example "
            f"inputs: {type(err).__name__}: {err}"
        ) from err
    pruner.apply_records(history)


def restructure(module: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Re-structure ``module`` in place to the checkpoint's pruned shapes; its weights are not loaded.

    Does nothing (returns False) for an unpruned checkpoint or a module already in the pruned shapes.
    A checkpoint of another architecture, or a record that does not fit the module, raises ``ValueError``
    naming the first layer that disagrees, and leaves ``module`` untouched: the replay is tried on a copy
    first, so a module is never half re-structured.
    """
    record = pruning_record(checkpoint)
    if record is None:
        return False
    prefix = _state_prefix(module, checkpoint["state_dict"])
    state = _strip(checkpoint["state_dict"], prefix)
    check_same_architecture(module, state)
    if first_shape_mismatch(module, state) is None:
        return False
    trial = copy.deepcopy(module)
    _replay(trial, record, prefix)
    mismatch = first_shape_mismatch(trial, state)
    if mismatch is not None:
        raise ValueError(f"the pruning record does not reproduce the checkpoint's shapes; first layer: {mismatch}")
    _replay(module, record, prefix)
    return True


def restore_pruned(module: nn.Module, checkpoint_or_path: Mapping[str, Any] | str | os.PathLike) -> nn.Module:
    """Re-structure any LightningModule or ``nn.Module`` from a pruned Lightning checkpoint and load its weights.

    ``module`` may be the LightningModule that was trained or the plain network it wraps (keys are matched
    by prefix, e.g. ``model.``). Returns ``module``, now pruned, with the checkpoint's weights.
    See the module docstring for an example.
    """
    checkpoint = (
        checkpoint_or_path if isinstance(checkpoint_or_path, Mapping) else load_checkpoint(checkpoint_or_path)
    )
    if "state_dict" not in checkpoint:
        raise ValueError("not a Lightning checkpoint: it has no 'state_dict'")
    prefix = _state_prefix(module, checkpoint["state_dict"])
    state = _strip(checkpoint["state_dict"], prefix)
    check_same_architecture(module, state)
    restructure(module, checkpoint)
    module.load_state_dict(state, strict=True)
    return module


class PrunedCheckpointMixin:
    """Add to a LightningModule so that ``MyModule.load_from_checkpoint(path)`` returns the pruned model.

    Lightning calls ``on_load_checkpoint`` before it loads the weights; this re-structures the freshly
    built module to the checkpoint's shapes first.

    Example::

        class MyModule(PrunedCheckpointMixin, LightningModule): ...
        model = MyModule.load_from_checkpoint("last.ckpt")
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restructure(self, checkpoint)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


class RestructureOnLoad:
    """A ``load_state_dict`` pre-hook that brings a fresh module to a checkpoint's pruned shapes before its
    weights load, for any LightningModule, during ``trainer.fit(module, ckpt_path=...)``.

    Lightning loads the model's weights before any callback state and hands callbacks no public hook in
    between, so the record is read from the checkpoint that Lightning has just loaded
    (:func:`~lightning_prune.lightning_compat.loaded_checkpoint`); ``get_pruner`` returns the fit's pruner, whose
    dependency graph replays the record. Copies of the module share the hook instead of deep-copying it
    (it refers to the trainer).

    >>> hook = RestructureOnLoad(lambda: None, trainer=None)
    >>> hook(torch.nn.Linear(2, 2), {}, "")  # no pruner or trainer yet: nothing to do
    """

    def __init__(self, get_pruner: Callable[[], ChannelPruner | None], trainer: Any) -> None:
        self.get_pruner = get_pruner
        self.trainer = trainer

    def __deepcopy__(self, memo: dict) -> RestructureOnLoad:
        return self

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        pruner = self.get_pruner()
        if prefix or pruner is None or self.trainer is None:
            return
        checkpoint = loaded_checkpoint(self.trainer)
        record = pruning_record(checkpoint)
        if record is None or record["history"] == pruner.history():
            return
        check_same_architecture(module, state_dict)
        if first_shape_mismatch(module, state_dict) is None:
            pruner.adopt_history(record["history"])  # the module re-structured itself (on_load_checkpoint)
            return
        if pruner.history():
            raise ValueError("the model was already pruned in this fit; resume with a fresh, unpruned module")
        pruner.replay(record["history"])
        mismatch = first_shape_mismatch(module, state_dict)
        if mismatch is not None:
            raise ValueError(f"the pruning record does not reproduce the checkpoint's shapes; first layer: {mismatch}")
