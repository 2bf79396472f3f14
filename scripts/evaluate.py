"""Evaluate a saved pruned model: ``python scripts/evaluate.py model_path=outputs/.../pruned_model.pt data=digits``."""

import hydra
from omegaconf import DictConfig

from lightning_prune.app.cli import user_errors_in_one_line
from lightning_prune.app.run import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@user_errors_in_one_line
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
