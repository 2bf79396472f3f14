"""The distillation loss and the logits of a model's output, framework-free."""

from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

from lightning_prune.engine.distill import distillation_loss, logits_of
from lightning_prune.engine.spec import DistillSpec


def by_hand(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """sum_i sum_c p_ic (log p_ic - log q_ic) / N * T², in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        t_exp = [math.exp(v / temperature) for v in t_row]
        s_exp = [math.exp(v / temperature) for v in s_row]
        p = [e / sum(t_exp) for e in t_exp]
        q = [e / sum(s_exp) for e in s_exp]
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return total / len(student) * temperature**2


def test_the_loss_equals_a_hand_computation():
    student = [[1.0, -2.0, 0.5, 3.0], [0.0, 0.3, -1.0, 2.0], [4.0, 1.0, 1.0, -3.0]]
    teacher = [[2.0, 0.0, -0.5, 1.0], [1.0, -1.0, 0.0, 0.5], [0.5, 3.0, -2.0, 0.0]]
    for temperature in (1.0, 2.0, 4.0):
        loss = distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature)
        assert loss.item() == pytest.approx(by_hand(student, teacher, temperature), rel=1e-5)
        assert loss.item() > 0


def test_the_loss_is_zero_when_the_logits_are_equal():
    logits = torch.randn(8, 10)
    assert distillation_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # a constant shift of every logit leaves the softmax, and so the loss, unchanged
    assert distillation_loss(logits, logits + 5.0, 3.0).item() == pytest.approx(0.0, abs=1e-5)


def test_the_loss_is_scaled_by_t_squared():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    temperature = 3.0
    scaled = distillation_loss(student, teacher, temperature)
    # the same KL at temperature 1 on pre-divided logits, times T²
    plain = distillation_loss(student / temperature, teacher / temperature, 1.0)
    assert scaled.item() == pytest.approx(plain.item() * temperature**2, rel=1e-5)
    assert scaled.item() != pytest.approx(plain.item(), rel=1e-2)


def test_sequence_logits_are_flattened_to_tokens():
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    loss = distillation_loss(student, teacher, 2.0)
    flat = distillation_loss(student.reshape(10, 7), teacher.reshape(10, 7), 2.0)
    assert loss.shape == () and loss.item() == pytest.approx(flat.item(), rel=1e-6)
    expected = by_hand(student.reshape(10, 7).tolist(), teacher.reshape(10, 7).tolist(), 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_only_the_student_gets_gradients():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_bad_inputs_to_the_loss():
    with pytest.raises(ValueError, match=r"temperature=0 is invalid; it must be > 0"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match=r"the student's logits have shape \(2, 3\) but the teacher's \(2, 4\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_logits_of_each_kind_of_output():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of(SimpleNamespace(logits=logits, loss=None)) is logits  # a Hugging Face output's attribute
    assert logits_of({"logits": logits, "hidden": torch.zeros(1)}) is logits
    assert logits_of(OrderedDict(loss=torch.zeros(()), logits=logits)) is logits  # transformers' ModelOutput
    assert logits_of((logits, torch.zeros(1))) is logits
    assert logits_of([logits]) is logits


@pytest.mark.parametrize("output", ["text", 3, None, (), {"loss": torch.zeros(())}, SimpleNamespace(logits=None)])
def test_logits_of_anything_else_is_a_type_error_naming_the_type(output):
    with pytest.raises(TypeError, match=f"model output of type {type(output).__name__};"):
        logits_of(output)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0}, ValueError, r"temperature=0 is invalid; it must be a number > 0"),
        ({"temperature": -1.5}, ValueError, r"temperature=-1.5 is invalid"),
        ({"temperature": "4"}, ValueError, r"temperature='4' is invalid"),
        ({"weight": 0}, ValueError, r"weight=0 is invalid; it must lie in \(0, 1\]"),
        ({"weight": 1.5}, ValueError, r"weight=1.5 is invalid; it must lie in \(0, 1\]"),
        ({"weight": True}, ValueError, r"weight=True is invalid"),
        ({"start_epoch": -1}, ValueError, r"start_epoch=-1 is invalid; it must be an integer >= 0"),
        ({"start_epoch": 1.0}, ValueError, r"start_epoch=1.0 is invalid; it must be an integer >= 0"),
        ({"student": 3}, ValueError, r"student=3 is invalid; it must be None .* or the name of its submodule"),
        ({"student": ""}, ValueError, r"student='' is invalid"),
        ({"teacher": "resnet"}, TypeError, r"teacher='resnet' \(a str\) is invalid; it must be None .*torch.nn.Module"),
    ],
)
def test_the_spec_rejects_bad_values_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        DistillSpec(**kwargs)


def test_the_spec_keeps_plain_numbers():
    spec = DistillSpec(temperature=2, weight=1, start_epoch=3, student="model")
    assert (spec.temperature, spec.weight, spec.start_epoch, spec.student) == (2.0, 1.0, 3, "model")
    assert isinstance(spec.temperature, float) and isinstance(spec.weight, float)
