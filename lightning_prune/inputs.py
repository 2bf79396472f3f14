"""Example inputs: the one-sample inputs that trace the model, build the dependency graph and check every prune.

torch-pruning traces the model with whatever inputs it gets and keeps that graph; a full training batch
would cost batch-size times the activation memory and time while the graph is built, and nothing in the
graph depends on the batch size. So the callback always traces with ONE sample: the user's
``example_inputs``, else ``LightningModule.example_input_array``, else the first sample of the first
training batch, each cut to its first sample along dim 0.

>>> one_sample((torch.zeros(8, 3), {"mask": torch.ones(8, 2)}))[0].shape
torch.Size([1, 3])
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from .pruner import output_tensors


def one_sample(inputs: Any) -> Any:
    """``inputs`` (a tensor, or tuples/lists/dicts of them) with every tensor cut to its first sample.

    >>> one_sample({"x": torch.zeros(4, 2), "scale": 2.0})["x"].shape
    torch.Size([1, 2])
    """
    if torch.is_tensor(inputs):
        return inputs[:1] if inputs.dim() > 0 else inputs
    if isinstance(inputs, tuple | list):
        return type(inputs)(one_sample(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: one_sample(v) for k, v in inputs.items()}
    return inputs


def first_sample(batch: Any) -> Any:
    """One sample of a training batch, as model inputs: the first element of an (inputs, target) pair.

    >>> first_sample((torch.zeros(4, 3), torch.zeros(4))).shape
    torch.Size([1, 3])
    """
    if isinstance(batch, tuple | list) and batch:
        batch = batch[0]
    if torch.is_tensor(batch) or isinstance(batch, dict):
        return one_sample(batch)
    raise ValueError(
        f"cannot take example inputs from a training batch of type {type(batch).__name__}; "
        "pass PruningCallback(example_inputs=...) or set LightningModule.example_input_array"
    )


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` with every tensor moved to ``device``.

    >>> to_device([torch.zeros(1)], "cpu")[0].device.type
    'cpu'
    """
    if torch.is_tensor(inputs):
        return inputs.to(device)
    if isinstance(inputs, tuple | list):
        return type(inputs)(to_device(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


def shapes(output: Any) -> list[tuple[int, ...]]:
    """The shapes of every tensor in a model output.

    >>> shapes({"logits": torch.zeros(2, 4)})
    [(2, 4)]
    """
    return [tuple(t.shape) for t in output_tensors(output)]


def resolve_example_inputs(trainer: pl.Trainer, pl_module: pl.LightningModule, given: Any = None) -> Any:
    """One-sample example inputs for a fit, on the module's device (see the module docstring)."""
    if given is not None:
        inputs = given
    elif pl_module.example_input_array is not None:
        inputs = pl_module.example_input_array
    else:
        # Taking a batch must not shift the RNG streams the training run will use.
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            batch = next(iter(trainer.fit_loop._data_source.dataloader()))
        random.setstate(py_state)
        np.random.set_state(np_state)
        inputs = first_sample(batch)
    return to_device(one_sample(inputs), pl_module.device)


def untraceable_error(pl_module: torch.nn.Module, inputs: Any, err: Exception) -> ValueError:
    """The error for a model that cannot run or be traced with ``inputs``: names the model, the input shapes
    and the cause, and what to do."""
    shape = [tuple(t.shape) for t in output_tensors(inputs)]
    return ValueError(
        f"torch-pruning cannot trace {type(pl_module).__name__} with example inputs of shape {shape}: "
        f"{type(err).__name__}: {err}. Pass PruningCallback(example_inputs=...) that the model's "
        "forward accepts, or ignore the offending layers with ignored_layers=[...]"
    )
