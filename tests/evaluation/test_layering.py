"""evaluation/ sits beside training/ (DESIGN.md §2): it uses data/ and models/, never training/ or cli/."""

from tests.test_dependency_direction import PACKAGE, imported_modules


def test_evaluation_imports_neither_training_nor_cli():
    imports = imported_modules(PACKAGE / "evaluation")
    assert not {name for name in imports if name.startswith(("xlstm_lm.training", "xlstm_lm.cli"))}
    assert not {name for name in imports if name.split(".")[0] in ("lightning", "hydra", "omegaconf")}
