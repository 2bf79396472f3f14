"""Coverage: 20 timm families (random init, toy sizes) pruned inside a short fit, locally, and 5 of them in
global context too (the 25 runs of docs/architectures.md).

    PYTHONPATH=. nice python scripts/coverage_timm.py                     # the 20 local runs
    PYTHONPATH=. nice python scripts/coverage_timm.py --contexts global \
        --models vit_tiny deit_tiny swin_tiny poolformer mixer

Writes ``scripts/results/coverage_timm.json`` (see ``coverage_common`` for what each status means).
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from coverage_common import main
from timm.layers import Mlp
from timm.models.efficientformer import EfficientFormer
from timm.models.metaformer import GroupNorm1, MetaFormer
from timm.models.mlp_mixer import MlpMixer


def create(name: str, **kwargs: object) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=4, **kwargs)


MODELS = {
    "vit_tiny": (partial(create, "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "deit_tiny": (partial(create, "deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "swin_tiny": (partial(create, "swin_tiny_patch4_window7_224", img_size=56, window_size=7, embed_dim=24,
                          depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), 56),  # fmt: skip
    "poolformer": (partial(MetaFormer, depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), downsample_norm=None,
                           norm_layers=GroupNorm1, layer_scale_init_values=1e-5, res_scale_init_values=None,
                           use_mlp_head=False, mlp_act=torch.nn.GELU, num_classes=4), 32),  # fmt: skip
    "mobilevitv2": (partial(create, "mobilevitv2_050"), 32),
    "mixer": (partial(MlpMixer, img_size=32, patch_size=8, num_blocks=2, embed_dim=64, mlp_layer=Mlp,
                      num_classes=4), 32),  # fmt: skip
    "levit": (partial(create, "levit_128s", img_size=64), 64),
    "efficientformer": (partial(EfficientFormer, depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), num_vit=1,
                                num_classes=4), 224),  # fmt: skip
    "resnet": (partial(create, "resnet18"), 32),
    "convnext": (partial(create, "convnext_atto", depths=(1, 1, 1, 1)), 32),
    "efficientnet": (partial(create, "efficientnet_b0"), 32),
    "mobilenetv3": (partial(create, "mobilenetv3_small_050"), 32),
    "regnet": (partial(create, "regnetx_002"), 32),
    "densenet": (partial(create, "densenet121", growth_rate=8, block_config=(2, 2, 2, 2)), 32),
    "ghostnet": (partial(create, "ghostnet_050"), 32),
    "rexnet": (partial(create, "rexnet_100"), 32),
    "dla": (partial(create, "dla34"), 32),
    "cspnet": (partial(create, "cspresnet50"), 32),
    "hrnet": (partial(create, "hrnet_w18_small"), 64),
    "inception": (partial(create, "inception_v3"), 75),
}

if __name__ == "__main__":
    main(MODELS, "coverage_timm.json", __doc__)
