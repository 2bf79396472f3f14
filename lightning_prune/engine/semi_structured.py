"""2:4 sparsity for inference on NVIDIA GPUs: ``Linear`` weights as torch's semi-structured sparse tensors.

A weight with at most 2 non-zeros in every group of 4 consecutive weights along its rows (what
``SparsifyCallback(granularity="2:4", sparsity=0.5)`` leaves) can be stored compressed and multiplied by the
sparse tensor cores of Ampere and later GPUs (``torch.sparse.to_sparse_semi_structured``). The checks run
before any conversion, each naming the layer and what it lacks, in this order: a 2-D weight, the 2:4
pattern, a dtype the backend takes (float16, bfloat16, int8, ...), dimensions that are multiples of the
backend's minimum shape, and a CUDA device. ``scripts/bench_semi_structured.py`` measures the speed-up.

>>> import torch
>>> check_semi_structured(torch.ones(64, 64, dtype=torch.float16))
Traceback (most recent call last):
...
ValueError: weight does not have the 2:4 pattern: some group of 4 consecutive weights of a row has more than 2 non-zeros
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.sparse import to_sparse_semi_structured

from .compat import semi_structured_constraints
from .sparsity import nm_pattern_holds


def check_semi_structured(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``weight`` can become a semi-structured sparse tensor."""
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D (a Linear weight) for 2:4 sparsity, got shape {tuple(weight.shape)}")
    if not nm_pattern_holds(weight, 2, 4):
        raise ValueError(
            f"{name} does not have the 2:4 pattern: some group of 4 consecutive weights of a row has more than "
            "2 non-zeros"
        )
    backend, constraints = semi_structured_constraints()
    if weight.dtype not in constraints:
        allowed = ", ".join(str(d).replace("torch.", "") for d in constraints)
        raise ValueError(
            f"{name} has dtype {str(weight.dtype).replace('torch.', '')}; the {backend} backend takes {allowed} "
            "(convert the model first, e.g. model.half())"
        )
    rows, cols = constraints[weight.dtype]
    m, n = weight.shape
    if m < rows or m % rows or n < cols or n % cols:
        raise ValueError(
            f"{name} has shape {(m, n)}; with {str(weight.dtype).replace('torch.', '')} on {backend} both "
            f"dimensions must be multiples of ({rows}, {cols})"
        )
    if not weight.is_cuda:
        raise ValueError(f"{name} is on {weight.device}; semi-structured sparse tensors need a CUDA device")


@dataclass
class SemiStructured:
    """What :func:`to_semi_structured` did: the converted layers, and why the others were left dense."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def to_semi_structured(model: nn.Module, layers: Sequence[str] | None = None) -> SemiStructured:
    """Replace the weight of ``Linear`` layers of ``model`` by ``torch.sparse.to_sparse_semi_structured`` of it,
    for inference (the weights no longer train).

    With ``layers`` (module names) every named layer must pass :func:`check_semi_structured` (else
    ``ValueError``, nothing converted); without, every ``Linear`` that passes is converted and the others are
    listed in ``skipped`` with the reason.
    """
    named = dict(model.named_modules())
    if layers is not None:
        missing = [n for n in layers if not isinstance(named.get(n), nn.Linear)]
        if missing:
            raise ValueError(f"not Linear layers of the model: {missing}")
        for name in layers:
            check_semi_structured(named[name].weight, f"{name}.weight")
    result = SemiStructured()
    candidates = list(layers) if layers is not None else [n for n, m in named.items() if isinstance(m, nn.Linear)]
    for name in candidates:
        try:
            check_semi_structured(named[name].weight, f"{name}.weight")
        except ValueError as err:
            result.skipped[name] = str(err)
            continue
        module = named[name]
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        result.converted.append(name)
    return result
