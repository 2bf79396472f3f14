#!/usr/bin/env bash
# Set up lightning-prune in ./.venv: bash scripts/setup.sh
# - the venv sees the system's packages, so a torch that is already installed is kept;
# - otherwise torch==${TORCH_VERSION:-2.13.0} is installed FIRST: a bare `torch` requirement on a
#   machine without torch can pull a ~5 GB CUDA build;
# - then this package (editable) with its dev extra, whose resolve keeps that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv --system-site-packages .venv
PY=.venv/bin/python
if "$PY" -c "import torch" 2>/dev/null; then
    echo "keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
    "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -c 'import torch, lightning, torch_pruning; print("set up: torch", torch.__version__, "| lightning", lightning.__version__, "| torch-pruning", torch_pruning.__version__)'
