#!/usr/bin/env bash
# Set up lightning-prune in ./.venv: bash scripts/setup.sh
# - torch and torchvision are installed FIRST, as the pinned pair torch==${TORCH_VERSION:-2.14.1} and
#   torchvision==${TORCHVISION_VERSION:-0.29.1}: a bare `torch` requirement can pull the newest multi-GB CUDA
#   build, and a torchvision built for another torch breaks `import torchvision` (and torchmetrics);
# - a torch already in the venv is kept only when a torchvision built for it is there too;
# - then this package (editable) with the extras the README's commands need: app (the example app) and dev.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.1}
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
PY=.venv/bin/python
if "$PY" -c "import torch, torchvision; torchvision.ops.nms" 2>/dev/null; then
    echo "keeping torch $("$PY" -c 'import torch; print(torch.__version__)') with torchvision $("$PY" -c 'import torchvision; print(torchvision.__version__)')"
else
    "$PY" -m pip install -q "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
fi
"$PY" -m pip install -q -e ".[app,dev]"
"$PY" -c 'import torch, torchvision, lightning, torch_pruning; print("set up: torch", torch.__version__, "| torchvision", torchvision.__version__, "| lightning", lightning.__version__, "| torch-pruning", torch_pruning.__version__)'
