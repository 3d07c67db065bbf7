"""Train the golden-loss run (20 CPU steps of a tiny xLSTM[7:1] on a stdlib slice) and print or write its losses.

    python scripts/golden_loss.py            # print `step loss` lines
    python scripts/golden_loss.py --write    # regenerate tests/assets/losses/tiny_cpu.txt

Regenerate only when a change is meant to alter the numerics, and say why in the commit message.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "assets" / "losses" / "tiny_cpu.txt"
STEPS = 20


def golden_run_losses(work_dir: Path) -> list[float]:
    """Losses of steps 0..STEPS-1 of the golden run, trained in `work_dir`."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import compose_train, small_run_overrides
    from xlstm_lm.cli.train import train

    overrides = [*small_run_overrides(work_dir / "cache", max_steps=STEPS), "model=xlstm_7_1", "trainer.deterministic=true",
                 "trainer.val_check_interval=1000", "trainer.checkpoint_every_n_steps=1000"]
    train(compose_train(overrides), work_dir / "run")
    with open(work_dir / "run" / "logs" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    return [float(row["train/loss"]) for row in sorted(rows, key=lambda row: int(row["step"]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(REPO)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        losses = golden_run_losses(Path(work_dir))
    text = "".join(f"{step} {loss:.6f}\n" for step, loss in enumerate(losses))
    if args.write:
        GOLDEN.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
