"""The package's layers: the library is light, the engine is free of Lightning, the app is optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_prune"
APP_ONLY = ("hydra", "omegaconf", "PIL", "sklearn", "torchmetrics", "matplotlib", "torchvision", "timm")


def loaded_after(statement: str, depth: int = 1) -> set[str]:
    code = (f"import sys; {statement}; "
            f"print(' '.join(sorted({{'.'.join(m.split('.')[:{depth}]) for m in sys.modules}})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(out.stdout.split())


def test_import_lightning_prune_loads_none_of_the_app_dependencies():
    loaded = loaded_after("from lightning_prune import PruningCallback, PruningSpec, restore_pruned")
    assert "lightning" in loaded and "torch_pruning" in loaded
    # Lightning itself imports torchmetrics, torchvision, PIL and matplotlib when they are installed:
    # what counts is what this package adds on top of its two dependencies.
    added = loaded - loaded_after("import lightning.pytorch, torch_pruning")
    assert not added & set(APP_ONLY), added & set(APP_ONLY)
    ours = loaded_after("from lightning_prune import PruningCallback, PruningSpec, restore_pruned", depth=2)
    assert "lightning_prune.engine" in ours and "lightning_prune.app" not in ours


def test_the_engine_runs_without_lightning():
    loaded = loaded_after("import lightning_prune.engine.session, lightning_prune.engine.budget")
    assert "lightning" not in loaded and "lightning_fabric" not in loaded


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").glob("*.py")), ids=lambda p: p.name)
def test_no_engine_module_imports_lightning_or_the_app(path):
    for name in imported_modules(path):
        assert not name.startswith(("lightning", "..", "hydra", "omegaconf")), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_private_torch_pruning_and_lightning_attributes_stay_in_the_compat_modules(path):
    if path.name in ("compat.py", "lightning_compat.py"):
        return
    text = path.read_text()
    for private in ("_pruning_history", "module2node", "REGISTERED_PRUNERS", "layer_init_out_ch", "init_num_heads",
                    "_checkpoint_connector", "_data_source", "_MultiProcessingLauncher", "_start_method",
                    "per_step_pruning_ratio", "pruning_ratio_dict[", ".num_heads.clear", "_param_to_name",
                    "MODULES_MAPPING", "._DG", "index_mapping", "torch_pruning.dependency", "_helpers"):
        assert private not in text, f"{path.relative_to(PACKAGE)} uses {private}"
