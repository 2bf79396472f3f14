"""The example app: a Pets/CIFAR-10/digits classifier trained and pruned by a Hydra config (``scripts/train.py``).

It needs the ``app`` extra (``pip install "lightning-prune[app]"``): hydra-core, torchmetrics, torchvision,
timm, pillow, scikit-learn. The library (:mod:`lightning_prune`) never imports it.
"""
