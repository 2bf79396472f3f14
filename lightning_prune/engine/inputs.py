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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """``tree`` (a tensor, or any nesting of tuples, lists, dicts, namedtuples and the model-output classes
    registered with ``torch.utils._pytree``) with ``fn`` applied to every tensor; other leaves kept.

    This and :func:`output_tensors` are the package's only walkers over nested inputs and outputs.

    >>> map_tensors(lambda t: t * 2, {"x": torch.ones(1), "n": 3})
    {'x': tensor([2.]), 'n': 3}
    """
    return pytree.tree_map(lambda leaf: fn(leaf) if torch.is_tensor(leaf) else leaf, tree)


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, or any nesting of containers), in order.

    >>> [tuple(t.shape) for t in output_tensors((torch.zeros(2), {"a": torch.zeros(1, 3)}))]
    [(2,), (1, 3)]
    """
    return [leaf for leaf in pytree.tree_leaves(output) if torch.is_tensor(leaf)]


def one_sample(inputs: Any) -> Any:
    """``inputs`` (a tensor, or tuples/lists/dicts of them) with every tensor cut to its first sample.

    >>> one_sample({"x": torch.zeros(4, 2), "scale": 2.0})["x"].shape
    torch.Size([1, 2])
    """
    return map_tensors(lambda t: t[:1] if t.dim() > 0 else t, inputs)


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
    return map_tensors(lambda t: t.to(device), inputs)


def shapes(output: Any) -> list[tuple[int, ...]]:
    """The shapes of every tensor in a model output.

    >>> shapes({"logits": torch.zeros(2, 4)})
    [(2, 4)]
    """
    return [tuple(t.shape) for t in output_tensors(output)]


def resolve_example_inputs(given: Any, module_example: Any, first_batch: Callable[[], Any]) -> Any:
    """One-sample example inputs: ``given``, else ``module_example`` (``example_input_array``), else the first
    sample of ``first_batch()``. Taking a batch does not shift the RNG streams training will use.

    >>> resolve_example_inputs(None, None, lambda: (torch.zeros(4, 3), torch.zeros(4))).shape
    torch.Size([1, 3])
    """
    if given is not None:
        inputs = given
    elif module_example is not None:
        inputs = module_example
    else:
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            batch = first_batch()
        random.setstate(py_state)
        np.random.set_state(np_state)
        inputs = first_sample(batch)
    return one_sample(inputs)


def untraceable_error(pl_module: torch.nn.Module, inputs: Any, err: Exception) -> ValueError:
    """The error for a model that cannot run or be traced with ``inputs``: names the model, the input shapes
    and the cause, and what to do."""
    shape = [tuple(t.shape) for t in output_tensors(inputs)]
    return ValueError(
        f"torch-pruning cannot trace {type(pl_module).__name__} with example inputs of shape {shape}: "
        f"{type(err).__name__}: {err}. Pass PruningCallback(example_inputs=...) that the model's "
        "forward accepts, or ignore the offending layers with ignored_layers=[...]"
    )
