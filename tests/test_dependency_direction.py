"""The layering of DESIGN.md §2: kernels import nothing of the project; models are plain PyTorch."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xlstm_lm"


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return names


def test_kernels_are_a_leaf_package():
    imports = imported_modules(PACKAGE / "kernels")
    assert not {name for name in imports if name.startswith("xlstm_lm") and not name.startswith("xlstm_lm.kernels")}
    assert not {name for name in imports if name.split(".")[0] in ("lightning", "hydra", "omegaconf")}


def test_models_use_no_lightning_or_hydra():
    imports = imported_modules(PACKAGE / "models")
    assert not {name for name in imports if name.split(".")[0] in ("lightning", "hydra", "omegaconf")}
    assert not {name for name in imports if name.startswith(("xlstm_lm.training", "xlstm_lm.cli", "xlstm_lm.data"))}


def test_interop_needs_neither_the_trainer_nor_transformers():
    # interop/ sits beside evaluation/: it reads and writes files of other tools with models/ and data/ only,
    # and transformers is the tests' reference, never a run-time dependency
    imports = imported_modules(PACKAGE / "interop")
    assert not {name for name in imports if name.startswith(("xlstm_lm.training", "xlstm_lm.cli"))}
    assert not {name for name in imports if name.split(".")[0] in ("lightning", "hydra", "omegaconf", "transformers")}
