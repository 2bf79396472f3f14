"""timm models, random init at toy sizes, pruned inside ``trainer.fit``: the vision transformers (ViT, DeiT,
Swin, PoolFormer, MobileViTv2, Mixer, LeViT, EfficientFormer) and CNN families. Every test runs the checks
of ``zoo.prune_in_fit``; where torch-pruning mis-groups layers, the warning must name them and the reason."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import zoo
from timm.layers import Mlp
from timm.models.efficientformer import EfficientFormer
from timm.models.metaformer import GroupNorm1, MetaFormer
from timm.models.mlp_mixer import MlpMixer


def create(name: str, **kwargs: object) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=zoo.NUM_CLASSES, **kwargs)


TRANSFORMERS = {
    "vit_tiny": (partial(create, "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "vit_qk_norm": (partial(create, "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, qk_norm=True), 32),
    "deit_tiny": (partial(create, "deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "swin_tiny": (partial(create, "swin_tiny_patch4_window7_224", img_size=56, window_size=7, embed_dim=24,
                          depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), 56),  # fmt: skip
    "poolformer": (partial(MetaFormer, depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), downsample_norm=None,
                           norm_layers=GroupNorm1, layer_scale_init_values=1e-5, res_scale_init_values=None,
                           use_mlp_head=False, mlp_act=torch.nn.GELU, num_classes=zoo.NUM_CLASSES), 32),  # fmt: skip
    "mobilevitv2": (partial(create, "mobilevitv2_050"), 32),
    "mixer": (partial(MlpMixer, img_size=32, patch_size=8, num_blocks=2, embed_dim=64, mlp_layer=Mlp,
                      num_classes=zoo.NUM_CLASSES), 32),  # fmt: skip
    "levit": (partial(create, "levit_128s", img_size=64), 64),
    "efficientformer": (partial(EfficientFormer, depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), num_vit=1,
                                num_classes=zoo.NUM_CLASSES), 224),  # fmt: skip  (attention biases fixed at 7x7)
}
CNNS = {
    "resnet": (partial(create, "resnet18"), 32),
    "convnext": (partial(create, "convnext_atto", depths=(1, 1, 1, 1)), 32),
    "efficientnet": (partial(create, "efficientnet_b0"), 32),
    "mobilenetv3": (partial(create, "mobilenetv3_small_050"), 32),
    "regnet": (partial(create, "regnetx_002"), 32),
    "densenet": (partial(create, "densenet121", growth_rate=8, block_config=(2, 2, 2, 2)), 32),
}
# what each family must leave out, and why (a substring of the warning); absent: nothing left out
LEFT_OUT = {
    "swin_tiny": ("not pruning layers that feed unsafe operations", "channels innermost"),  # patch merging
    "mobilevitv2": ("attn.qkv_proj", "a split keeps one channel apart to broadcast"),  # the context query
    "mixer": ("mlp_tokens.fc2", "couples its channels with a dimension of another size"),  # token mixing
    "levit": ("attn.qkv", "split per head into keys and values of different sizes"),
    "efficientformer": ("token_mixer.qkv", "split per head into keys and values of different sizes"),
}
GLOBAL = ["vit_tiny", "deit_tiny", "swin_tiny", "poolformer", "mixer"]


def run(family: str, context: str, tmp_path) -> tuple:
    make, size = {**TRANSFORMERS, **CNNS}[family]
    module, callback, found = zoo.prune_in_fit(make, "x", (3, size, size), context, tmp_path)
    ours = [w for w in found["warnings"] if "PruningCallback" in w and "not fine-tuned" not in w]
    if family in LEFT_OUT:
        name, reason = LEFT_OUT[family]
        assert any(name in w and reason in w for w in ours), ours
        assert callback.left_out or callback.unsafe_ignored
    else:
        assert ours == [] and callback.left_out == [] and callback.unsafe_ignored == []
    assert not any("cannot trace" in w for w in found["warnings"])
    # no false alarm on crops of spatial dims of channels-last tensors (Swin's window padding crop)
    assert not any("fixed channel positions" in w for w in ours), ours
    return module, callback


@pytest.mark.parametrize(
    ("family", "context"),
    [(f, "local") for f in TRANSFORMERS] + [(f, "global") for f in GLOBAL] + [(f, "local") for f in CNNS],
)
def test_timm_model_prunes_inside_a_fit(family: str, context: str, tmp_path) -> None:
    module, callback = run(family, context, tmp_path)
    for block in callback.pruner.blocks:  # attention: stored sizes follow the pruned widths
        if block.unsupported:
            continue
        attn = module.get_submodule(block.owner)
        qkv = module.get_submodule(block.q)
        assert qkv.out_features == 3 * attn.num_heads * block.dim_left
        if hasattr(attn, "head_dim"):
            assert attn.head_dim == block.dim_left
        if hasattr(attn, "attn_dim"):
            assert attn.attn_dim == attn.num_heads * attn.head_dim == module.get_submodule(block.o).in_features


def test_vit_heads_lose_the_same_dims_and_images_of_other_sizes_still_run(tmp_path) -> None:
    module, callback = run("vit_tiny", "local", tmp_path)
    net = module.net
    for block in net.blocks:
        assert block.attn.num_heads == 3 and block.attn.head_dim < 64
        assert block.attn.qkv.out_features == 3 * block.attn.attn_dim
    assert net.cls_token.shape[-1] == net.pos_embed.shape[-1] == net.patch_embed.proj.out_channels < 192


def test_vit_with_normalised_heads_loses_whole_heads(tmp_path) -> None:
    module, callback = run("vit_qk_norm", "local", tmp_path)
    for block in module.net.blocks:  # q/k norms over each head's 64 dims: no dim can go, a head can
        assert (block.attn.num_heads, block.attn.head_dim) == (2, 64) and block.attn.q_norm.weight.numel() == 64
        assert block.attn.qkv.out_features == 3 * 2 * 64


def test_poolformer_scale_shape_follows_its_pruned_scale(tmp_path) -> None:
    module, _ = run("poolformer", "local", tmp_path)
    scales = [m for m in module.modules() if type(m).__name__ == "Scale"]
    assert scales and all(m.shape[0] == m.scale.numel() for m in scales)
    assert any(m.scale.numel() < 16 for m in scales if m.shape[0] <= 16)
