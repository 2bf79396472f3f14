"""Export a saved pruned model for deployment:
``python scripts/export.py model_path=outputs/.../pruned_model.pt format=onnx``.

Writes ``pruned_model.onnx`` beside the model, checks it in onnxruntime against the PyTorch outputs, and
records both latencies under ``onnx`` in the run's ``summary.json``. Needs the ``onnx`` extra.
"""

import hydra
from omegaconf import DictConfig

from lightning_prune.app.cli import user_errors_in_one_line
from lightning_prune.app.run import export


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@user_errors_in_one_line
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
