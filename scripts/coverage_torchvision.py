"""Coverage: every torchvision classification model (random init, small inputs) pruned inside a short fit.

    PYTHONPATH=. nice python scripts/coverage_torchvision.py            # all 80, about an hour or more on CPU
    PYTHONPATH=. python scripts/coverage_torchvision.py --models resnet18 vit_b_16

Writes ``scripts/results/coverage_torchvision.json`` (see ``coverage_common`` for what each status means).
"""

from __future__ import annotations

from functools import partial

from coverage_common import main
from torchvision import models as tv

NAMES = tv.list_models(module=tv)
# input sizes where 64x64 does not fit the architecture, and constructor arguments for small inputs
SIZES = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}
KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
    **{name: {"image_size": SIZES.get(name, 64)} for name in NAMES if name.startswith("vit_")},
}


def build(name: str) -> object:
    return tv.get_model(name, weights=None, num_classes=4, **KWARGS.get(name, {}))


MODELS = {name: (partial(build, name), SIZES.get(name, 64)) for name in NAMES}

if __name__ == "__main__":
    main(MODELS, "coverage_torchvision.json", __doc__)
