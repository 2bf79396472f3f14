"""The pure mask functions, the 2:4 conversion's checks (on CPU) and compaction, without Lightning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import PlainNet, ResidualNet
from torch import nn
from torch.nn.utils import prune

from lightning_prune.engine import compact as compact_module
from lightning_prune.engine.compact import compact, zero_channels
from lightning_prune.engine.semi_structured import check_semi_structured, to_semi_structured
from lightning_prune.engine.sparsify import ScheduledSparsity, is_masked, remove_masks
from lightning_prune.engine.sparsity import compute_masks, lift_masks, nm_pattern_holds, parse_granularity, unit_view
from lightning_prune.engine.spec import SparsifySpec


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(8, 4, 3, 3, generator=g), "b": torch.randn(16, 8, 1, 1, generator=g) * 3,
            "c": torch.randn(6, 32, generator=g) * 0.1}


def test_global_weight_sparsity_zeroes_the_smallest_magnitudes_of_all_layers():
    w = weights()
    masks = compute_masks(w, 0.7, "weight", "global")
    total = sum(t.numel() for t in w.values())
    assert sum(int((~m).sum()) for m in masks.values()) == math.floor(0.7 * total + 0.5)
    pruned = torch.cat([w[n][~masks[n]].abs() for n in w])
    # every layer keeps its largest weight; the others compete across layers
    kept = torch.cat([w[n][masks[n]].abs().sort().values[:-1] for n in w])
    assert pruned.max() <= kept.min()
    assert (~masks["c"]).float().mean() > (~masks["b"]).float().mean()  # the small-valued layer lost most


def test_global_filter_sparsity_is_within_one_filter_of_the_target_and_ranks_filters_by_mean_magnitude():
    w = weights()
    masks = compute_masks(w, 0.5, "filter", "global")
    total = sum(t.numel() for t in w.values())
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert abs(zeros - 0.5 * total) <= max(t[0].numel() for t in w.values()) / 2
    score = {n: w[n].reshape(w[n].shape[0], -1).abs().mean(1) for n in w}
    dead = {n: ~masks[n].reshape(w[n].shape[0], -1).any(1) for n in w}
    alive = torch.cat([score[n][~dead[n]].sort().values[:-1] for n in w])  # each layer's best filter stays
    assert torch.cat([score[n][dead[n]] for n in w]).max() <= alive.min()
    for n in w:  # a filter is zeroed whole, or kept whole
        rows = masks[n].reshape(w[n].shape[0], -1)
        assert torch.all(rows.all(1) | ~rows.any(1))


@pytest.mark.parametrize("granularity", ["weight", "kernel", "filter", "2:4"])
@pytest.mark.parametrize("context", ["local", "global"])
def test_masks_only_grow_from_step_to_step(granularity, context):
    w = weights()
    previous = None
    for sparsity in (0.1, 0.3, 0.5):
        masks = compute_masks(w, sparsity, granularity, context, previous=previous)
        if previous is not None:
            for name in w:
                assert torch.all(masks[name] <= previous[name]), name  # what was pruned stays pruned
        # the weights change between steps (training): a pruned unit must not come back
        w = {n: t + 0.5 * torch.randn_like(t) for n, t in w.items()}
        previous = masks


@pytest.mark.parametrize("granularity", ["weight", "kernel", "filter", "2:4"])
def test_lifted_masks_keep_what_was_kept_and_bring_back_the_asked_share_of_pruned_units(granularity):
    g = parse_granularity(granularity)
    masks = compute_masks(weights(), 0.5, granularity, "global")

    def pruned(mask: torch.Tensor) -> torch.Tensor:
        units = unit_view(mask, g)
        return units.sum(dim=1) <= g.n if g.is_nm else ~units.any(dim=1)

    lifted = lift_masks(masks, 0.4, granularity, torch.Generator().manual_seed(0))
    for name, mask in masks.items():
        assert torch.all(lifted[name] >= mask), name  # kept stays kept
        assert int(pruned(lifted[name]).sum()) == math.floor(0.4 * int(pruned(mask).sum()) + 0.5), name
        still = pruned(lifted[name])
        if g.is_nm:  # a group still pruned keeps its pattern; one that came back is whole
            units, before = unit_view(lifted[name], g), unit_view(mask, g)
            assert torch.equal(units[still], before[still]) and bool(units[~still].all())
    again = lift_masks(masks, 0.4, granularity, torch.Generator().manual_seed(0))
    assert all(torch.equal(again[n], lifted[n]) for n in masks)  # seeded
    assert all(bool(m.all()) for m in lift_masks(masks, 0.0, granularity).values())  # dense again
    with pytest.raises(ValueError, match="share=1.5 is invalid"):
        lift_masks(masks, 1.5, granularity)


@pytest.mark.parametrize("context", ["local", "global"])
def test_a_dsd_schedule_grows_then_lifts_the_masks_and_ends_dense(context):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    spec = SparsifySpec(sparsity=0.6, schedule="dsd", context=context, end_epoch=3)
    session = ScheduledSparsity(net, torch.zeros(1, 3, 5, 5), spec, end_epoch=3)
    total = sum(net[i].weight.numel() for i in (0, 2))
    seen, masks = [], []
    for epoch in range(5):  # progress .25, .5, .75, 1 then done: dsd = .5, 1, .5, 0, (0)
        event = session.on_epoch_end(epoch)
        seen.append(None if event is None else round(event["sparsify/target"], 6))
        zeros = sum(int((~session.masks[f"{i}.weight"]).sum()) for i in (0, 2))
        assert abs(zeros / total - 0.6 * [0.5, 1.0, 0.5, 0.0, 0.0][epoch]) < 0.02, epoch
        if event is not None:  # the event reports the masks (weights brought back are zero until they train)
            assert event["sparsify/sparsity"] == pytest.approx(zeros / total)
        masks.append(dict(session.masks))
    assert seen == [0.3, 0.6, 0.3, 0.0, None]  # the falling steps are not skipped; nothing is due after
    for name in masks[1]:
        assert torch.all(masks[2][name] >= masks[1][name])  # lifting keeps what was kept
    assert all(bool(m.all()) for m in session.masks.values())  # the schedule's final value: dense


def test_with_lottery_ticket_only_a_growing_step_rewinds():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 9, 2))
    spec = SparsifySpec(sparsity=0.5, schedule="dsd", end_epoch=1, lottery_ticket=True, prune_output_layers=False)
    session = ScheduledSparsity(net, torch.zeros(1, 3, 5, 5), spec, end_epoch=1)
    session.on_epoch_start(0)
    saved = session.rewind_state["0.weight"].clone()
    session.on_epoch_end(0)  # grows to .5: rewound to the saved weights, times the mask
    assert torch.equal(session.effective("0.weight"), saved * session.masks["0.weight"])
    with torch.no_grad():
        session.param("0.weight").add_(1.0)  # training moves the kept weights
        session.reapply()
    trained = session.effective("0.weight")
    session.on_epoch_end(1)  # falls to 0: lifted, not rewound
    assert bool(session.masks["0.weight"].all())
    assert torch.equal(session.effective("0.weight"), trained)  # the revived weights start at zero


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_keeps_the_n_largest_of_every_group_of_m(n, m):
    w = {"c": weights()["c"]}
    mask = compute_masks(w, (m - n) / m, f"{n}:{m}", "local")["c"]
    masked = w["c"] * mask
    assert nm_pattern_holds(masked, n, m)
    groups, kept = w["c"].reshape(-1, m).abs(), mask.reshape(-1, m)
    assert torch.all(kept.sum(1) == n)
    for g, k in zip(groups, kept):
        assert set(torch.nonzero(k).flatten().tolist()) == set(g.topk(n).indices.tolist())
    half = compute_masks(w, (m - n) / m / 2, f"{n}:{m}", "local")["c"].reshape(-1, m)
    assert int((half.sum(1) == n).sum()) == math.floor(half.shape[0] / 2 + 0.5)  # half the groups pruned


def test_every_layer_keeps_a_unit_and_the_random_criterion_is_seeded():
    w = weights()
    masks = compute_masks(w, 0.99, "filter", "local")
    assert all(int(m.reshape(m.shape[0], -1).any(1).sum()) == 1 for m in masks.values())
    draw = [compute_masks(w, 0.5, "weight", "local", "random", generator=torch.Generator().manual_seed(s))
            for s in (1, 1, 2)]
    assert torch.equal(draw[0]["a"], draw[1]["a"]) and not torch.equal(draw[0]["a"], draw[2]["a"])
    own = compute_masks(w, 0.5, "weight", "local", criterion=lambda t: -t.abs())  # a callable criterion
    assert torch.equal(own["a"], ~compute_masks(w, 0.5, "weight", "local")["a"])


def test_mask_functions_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match=r"layer 'a': rows of 36 weights cannot be cut into groups of 8"):
        compute_masks({"a": torch.ones(2, 4, 3, 3)}, 0.5, "4:8", "local")
    with pytest.raises(ValueError, match=r"sparsity=0.8 is invalid for granularity 2:4"):
        compute_masks(weights(), 0.8, "2:4", "local")
    with pytest.raises(ValueError, match="must return scores of the weight's shape"):
        compute_masks(weights(), 0.5, "weight", "local", criterion=lambda t: t.sum())
    with pytest.raises(ValueError, match=r"criterion='l1' is unknown"):
        SparsifySpec(criterion="l1")


# -- 2:4 semi-structured conversion (its checks run on CPU) -------------------------------------------------
def two_four(rows: int, cols: int, dtype=torch.float16) -> torch.Tensor:
    w = torch.randn(rows, cols)
    return (w * compute_masks({"w": w}, 0.5, "2:4", "local")["w"]).to(dtype)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (torch.ones(2, 64, 1), r"fc.weight must be 2-D"),
        (torch.ones(64, 64, dtype=torch.float16), r"fc.weight does not have the 2:4 pattern"),
        (two_four(64, 64, torch.float64), r"fc.weight has dtype float64; the \w+ backend takes .*float16"),
        (two_four(40, 64), r"fc.weight has shape \(40, 64\); with float16 on \w+ both dimensions must be multiples"),
        (two_four(64, 64), r"fc.weight is on cpu; semi-structured sparse tensors need a CUDA device"),
    ],
)
def test_the_semi_structured_checks_name_the_layer_and_what_it_lacks(weight, message):
    with pytest.raises(ValueError, match=message):
        check_semi_structured(weight, "fc.weight")


def test_to_semi_structured_converts_nothing_it_cannot_and_names_why():
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).half()
    with torch.no_grad():
        net[0].weight.copy_(two_four(64, 64))
    result = to_semi_structured(net)
    assert result.converted == [] and set(result.skipped) == {"0", "2"}
    assert "need a CUDA device" in result.skipped["0"] and "2:4 pattern" in result.skipped["2"]
    with pytest.raises(ValueError, match="not Linear layers of the model: \\['1'\\]"):
        to_semi_structured(net, layers=["1"])
    with pytest.raises(ValueError, match="2.weight does not have the 2:4 pattern"):
        to_semi_structured(net, layers=["2", "0"])
    assert type(net[0].weight) is nn.Parameter  # nothing converted


# -- compaction ---------------------------------------------------------------------------------------
def sparsified(net: nn.Module, granularity: str = "filter", sparsity: float = 0.5) -> nn.Module:
    spec = SparsifySpec(sparsity=sparsity, granularity=granularity, schedule="one_shot")
    session = ScheduledSparsity(net, torch.zeros(1, 3, 8, 8), spec, end_epoch=0)
    session.on_epoch_end(0)
    session.make_permanent()
    return net.eval()


def outputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("net_cls", [PlainNet, ResidualNet])
def test_compact_removes_the_filters_sparsity_zeroed_and_keeps_the_outputs(net_cls):
    net = sparsified(net_cls())
    for m in net.modules():  # BatchNorm statistics as after training, so that eval mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(8, 3, 8, 8)
    before = outputs(net, x)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    alive = {n: int(m.weight.reshape(m.out_channels, -1).any(1).sum()) for n, m in convs.items()}
    findings = zero_channels(net, x[:1])
    assert convs["features.0.0" if net_cls is PlainNet else "stem.0"].out_channels == 16  # not changed by that
    compact(net, x[:1])
    torch.testing.assert_close(outputs(net, x), before, rtol=1e-5, atol=1e-6)
    if net_cls is PlainNet:  # every zeroed filter goes
        assert {n: m.out_channels for n, m in convs.items()} == alive
        assert {f.action for f in findings} == {"removed"}
    else:  # the residual group loses only the channels zeroed in the stem AND the block's last conv
        kept = [f for f in findings if f.action == "kept"]
        assert kept and all("has non-zero weights for it" in f.reason for f in kept)
        assert convs["block.0.0"].out_channels == alive["block.0.0"]
        assert convs["stem.0"].out_channels < 16


class BiasNet(nn.Module):
    """Convolutions with biases and no BatchNorm: a zeroed filter leaves its bias, a constant, behind."""

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=padding)
        self.fc = nn.Linear(8 * 4 * 4 if padding == 0 else 8 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def ln_structured(net: nn.Module) -> nn.Module:
    for layer in (net.conv1, net.conv2):
        prune.ln_structured(layer, "weight", amount=0.5, n=1, dim=0)
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-0.5, 0.5, layer.out_channels))  # some channels ReLU to zero
    return net.eval()


def test_compact_folds_constant_channels_into_unpadded_and_linear_readers_after_ln_structured():
    net = ln_structured(BiasNet())
    assert is_masked(net.conv1, "weight")  # torch.nn.utils.prune's masks are still on
    x = torch.randn(4, 3, 8, 8)
    before = outputs(net, x)
    findings = zero_channels(net, x[:1])
    assert {f.action for f in findings} == {"removed", "folded"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compact(net, x[:1])
    assert not is_masked(net.conv1, "weight")
    assert (net.conv1.out_channels, net.conv2.out_channels) == (4, 4)
    torch.testing.assert_close(outputs(net, x), before, rtol=1e-5, atol=1e-6)


def test_compact_keeps_and_reports_a_constant_that_meets_padding():
    net = ln_structured(BiasNet(padding=1))
    x = torch.randn(4, 3, 8, 8)
    before = outputs(net, x)
    with pytest.warns(UserWarning, match=r"left in place: conv1 \[.*\]: its non-zero constant reaches 'conv2'"):
        compact(net, x[:1])
    assert net.conv1.out_channels > 4 and net.conv2.out_channels == 4  # conv2 feeds fc: all its zeroed channels go
    torch.testing.assert_close(outputs(net, x), before, rtol=1e-5, atol=1e-6)


def test_compact_never_changes_the_outputs_silently(monkeypatch):
    net = ln_structured(BiasNet(padding=1))
    remove_masks(net)  # compact makes them permanent first, whatever happens next
    monkeypatch.setattr(compact_module, "_foldable", lambda module: True)  # a wrong fold: through padding
    x = torch.randn(4, 3, 8, 8)
    before, state = outputs(net, x), {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="compact would change the model's outputs.*left unchanged"):
        compact(net, x[:1])
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(outputs(net, x), before)
