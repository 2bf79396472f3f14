"""Train and prune a classifier: ``python scripts/train.py data=digits schedule=agp ratio=0.4``.

Hydra composes conf/train.yaml; the logic lives in lightning_prune.app.
"""

import hydra
from omegaconf import DictConfig

from lightning_prune.app.cli import user_errors_in_one_line
from lightning_prune.app.config import register_configs
from lightning_prune.app.run import train

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@user_errors_in_one_line
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
