"""Golden loss: 20 seeded CPU steps of a tiny xLSTM[7:1] reproduce tests/assets/losses/tiny_cpu.txt.

Any change to the model, kernels, data order or optimizer that moves these numbers shows here. The
tolerance (relative 1e-4) covers float32 rounding differences between CPUs and BLAS builds, not changes of
math. Regenerate with `python scripts/golden_loss.py --write`, only on purpose, saying why in the commit.
"""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_tiny_cpu_run_matches_the_golden_losses(tmp_path):
    spec = importlib.util.spec_from_file_location("golden_loss", REPO / "scripts" / "golden_loss.py")
    golden_loss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden_loss)
    expected = [float(line.split()[1]) for line in golden_loss.GOLDEN.read_text().splitlines()]
    losses = golden_loss.golden_run_losses(tmp_path)
    assert len(losses) == len(expected) == golden_loss.STEPS
    assert losses == pytest.approx(expected, rel=1e-4)
