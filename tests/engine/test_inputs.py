"""Walking nested inputs/outputs and choosing one-sample example inputs (lightning_prune.engine.inputs)."""

from __future__ import annotations

import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from lightning_prune.engine.inputs import (
    first_sample,
    map_tensors,
    one_sample,
    output_tensors,
    resolve_example_inputs,
    shapes,
    to_device,
    untraceable_error,
)

Batch = namedtuple("Batch", ["image", "meta", "name"])


def nested():
    """A tuple holding a namedtuple, a dict with a list, a scalar tensor and plain values."""
    marker = object()
    tree = (
        Batch(image=torch.arange(24.0).view(4, 6), meta={"mask": torch.ones(4, 2), "k": 3}, name="b0"),
        [torch.arange(8).view(4, 2), None, 2.5],
        {"scale": torch.tensor(7.0), "tag": marker},
    )
    return tree, marker


def test_map_tensors_applies_to_every_tensor_and_keeps_structure_and_other_leaves():
    tree, marker = nested()
    out = map_tensors(lambda t: t * 2, tree)
    assert type(out) is tuple and type(out[0]) is Batch and type(out[1]) is list and type(out[2]) is dict
    assert torch.equal(out[0].image, tree[0].image * 2)
    assert torch.equal(out[0].meta["mask"], torch.full((4, 2), 2.0))
    assert out[0].meta["k"] == 3 and out[0].name == "b0"  # a plain int is not doubled
    assert torch.equal(out[1][0], tree[1][0] * 2) and out[1][1] is None and out[1][2] == 2.5
    assert out[2]["scale"].item() == 14.0 and out[2]["tag"] is marker


def test_output_tensors_lists_every_tensor_in_order():
    a, b, c, d = (torch.full((i + 1,), float(i)) for i in range(4))
    # tuples/lists in order, dicts in insertion order, namedtuple fields in declaration order
    out = output_tensors((a, {"z": b, "y": [c, "skip"]}, Batch(image=d, meta=None, name=3)))
    assert len(out) == 4 and all(x is y for x, y in zip(out, [a, b, c, d]))
    assert output_tensors({"loss": 1.0, "n": 2}) == []
    assert output_tensors(a)[0] is a


def test_shapes_of_every_output_tensor():
    assert shapes((torch.zeros(2, 3), {"aux": [torch.zeros(2)]}, "text")) == [(2, 3), (2,)]


def test_one_sample_cuts_every_tensor_to_batch_one_and_leaves_the_rest_alone():
    tree, marker = nested()
    out = one_sample(tree)
    assert out[0].image.shape == (1, 6) and torch.equal(out[0].image, tree[0].image[:1])
    assert out[0].meta["mask"].shape == (1, 2)
    assert out[1][0].shape == (1, 2) and torch.equal(out[1][0], torch.tensor([[0, 1]]))
    assert out[2]["scale"].shape == () and out[2]["scale"].item() == 7.0  # a 0-d tensor has no batch
    assert out[0].meta["k"] == 3 and out[0].name == "b0" and out[1][1] is None and out[2]["tag"] is marker
    assert type(out[0]) is Batch
    assert one_sample(torch.zeros(1, 3)).shape == (1, 3)  # already one sample
    assert one_sample(torch.zeros(0, 3)).shape == (0, 3)  # an empty batch stays empty


def test_first_sample_takes_the_inputs_of_an_input_target_pair():
    x, y = torch.arange(12.0).view(4, 3), torch.arange(4)
    assert torch.equal(first_sample((x, y)), x[:1])
    assert torch.equal(first_sample([x, y]), x[:1])
    assert torch.equal(first_sample(x), x[:1])  # a bare tensor batch is the inputs
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "labels": torch.zeros(4)}
    out = first_sample(batch)  # a dict batch is passed to forward as keywords, whole
    assert set(out) == {"input_ids", "labels"} and out["input_ids"].shape == (1, 5)


@pytest.mark.parametrize(
    ("batch", "type_name"),
    [(((torch.zeros(2, 3), torch.zeros(2, 4)), torch.zeros(2)), "tuple"), ("text", "str"), ([], "list"), (7, "int")],
)
def test_first_sample_of_an_unusable_batch_names_its_type(batch, type_name):
    with pytest.raises(ValueError, match=rf"from a training batch of type {type_name}; pass PruningCallback"):
        first_sample(batch)


def test_to_device_moves_tensors_only():
    out = to_device({"x": torch.zeros(2), "n": 4, "l": [torch.ones(1)]}, "meta")
    assert out["x"].device.type == "meta" and out["l"][0].device.type == "meta" and out["n"] == 4
    assert to_device(torch.zeros(1), torch.device("cpu")).device.type == "cpu"


def test_resolve_prefers_the_given_inputs_then_the_module_example_and_cuts_them():
    def no_batch():
        raise AssertionError("the training data must not be touched")

    given, example = torch.zeros(5, 3), torch.ones(6, 2)
    assert torch.equal(resolve_example_inputs(given, example, no_batch), given[:1])
    assert torch.equal(resolve_example_inputs(None, example, no_batch), example[:1])
    out = resolve_example_inputs(None, (torch.ones(6, 2), {"m": torch.ones(6, 1)}), no_batch)
    assert out[0].shape == (1, 2) and out[1]["m"].shape == (1, 1)


def test_resolve_from_the_first_batch_keeps_every_rng_stream():
    def first_batch():
        # a shuffling loader draws from all three generators
        noise = random.random() + np.random.rand() + torch.rand(1).item()
        return torch.full((4, 3), noise), torch.arange(4)

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    out = resolve_example_inputs(None, None, first_batch)
    assert out.shape == (1, 3)
    # the next draws are the ones training would have made without the peek
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_untraceable_error_names_the_model_the_shapes_and_the_cause():
    class MyNet(torch.nn.Module):
        pass

    inputs = (torch.zeros(1, 3, 8, 8), {"meta": torch.zeros(1, 4)})
    err = untraceable_error(MyNet(), inputs, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert isinstance(err, ValueError)
    assert str(err).startswith(
        "torch-pruning cannot trace MyNet with example inputs of shape [(1, 3, 8, 8), (1, 4)]: "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied. Pass PruningCallback(example_inputs=...)"
    )
    assert "ignored_layers" in str(err)
