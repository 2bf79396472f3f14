"""Knowledge distillation, framework-free: the logits of a model's output and the distillation loss.

:func:`distillation_loss` is Hinton et al.'s soft-target term, ``KL(softmax(t / T) || softmax(s / T)) * T²``
averaged over the samples (or the tokens of a sequence model); :func:`logits_of` finds the logits in the
outputs models return (a tensor, a Hugging Face output, a dict, a tuple).
:class:`~lightning_prune.distill.DistillationCallback` wires both into a fit.

>>> student = torch.tensor([[2.0, 0.0, -1.0]])
>>> float(distillation_loss(student, student.clone(), temperature=4.0))
0.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's ``output``: the tensor itself; the ``.logits`` of an object that has them (Hugging
    Face outputs); ``output["logits"]`` of a dict; the first element of a tuple or list.

    >>> logits = torch.zeros(2, 3)
    >>> logits_of(logits) is logits, logits_of({"logits": logits}) is logits, logits_of((logits, None)) is logits
    (True, True, True)
    >>> logits_of("text")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: cannot find the logits in a model output of type str; the model must return a tensor, ...
    """
    found: Any = output
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get("logits")
    elif hasattr(output, "logits"):
        found = output.logits
    elif isinstance(output, Sequence) and not isinstance(output, str | bytes) and len(output):
        found = output[0]
    if isinstance(found, torch.Tensor) and found is not output:
        return found
    raise TypeError(
        f"cannot find the logits in a model output of type {type(output).__name__}; the model must return a "
        'tensor, an object with .logits, a dict with "logits", or a tuple or list whose first element is the logits'
    )


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T))`` with ``batchmean`` reduction, times ``T²`` (so that its
    gradients keep their scale as ``T`` changes; Hinton et al., 2015). Logits of more than two dimensions, such as
    a sequence model's ``(N, L, V)``, are flattened to ``(-1, V)``: the mean is over tokens. Computed in float32;
    the teacher's logits carry no gradient.

    >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)   # the teacher's and the student's
    >>> manual = (p * (p.log() - q.log())).sum() * 2 ** 2
    >>> torch.allclose(distillation_loss(s, t, temperature=2.0), manual)
    True
    >>> distillation_loss(torch.zeros(2, 5, 7), torch.zeros(2, 5, 7), 1.0).shape   # (N, L, V): one scalar
    torch.Size([])
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid; it must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"the student's logits have shape {tuple(student_logits.shape)} but the teacher's "
            f"{tuple(teacher_logits.shape)}; both models must produce logits of the same shape"
        )
    if student_logits.dim() == 0:
        raise ValueError("the logits are a scalar; they must have a last dimension of classes (or vocabulary)")
    if student_logits.dim() != 2:  # (V,) -> (1, V); (N, L, V) -> (N * L, V)
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2
