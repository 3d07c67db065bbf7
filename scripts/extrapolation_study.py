"""The extrapolation study: train xLSTM[7:1], xLSTM[1:0] and a Llama baseline alike, score them far past
their training context, and plot the three together (the laptop-scale version of the xLSTM paper's
experiment: trained at 2048 tokens, evaluated up to 16,384).

    python scripts/extrapolation_study.py                       # train (skipped when done) + evaluate
    python scripts/extrapolation_study.py --steps 200 --context 256 --factors 1 4 16 64 --out outputs/extrapolation

Each model is trained by `train.py` at size tiny on the embedded default corpus with the same token budget
(steps x batch x context) and seed; then `xlstm-eval` scores the validation split, joined into one token
stream, at factor x context for every factor, and writes the table, JSON and PNG into <out>/eval.
`--docs` copies the plot and the JSON to docs/ for the README.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("xlstm_7_1", "xlstm_1_0", "llama")


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps of every model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=256, help="training context in tokens")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16, 64], help="evaluation contexts / training context")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "extrapolation")
    parser.add_argument("--docs", action="store_true", help="copy the plot and JSON into docs/")
    args = parser.parse_args()

    exports = []
    for model in args.models:
        run_dir = args.out.resolve() / model
        if not (run_dir / "export" / "model.safetensors").is_file():
            run([sys.executable, "train.py", f"model={model}", "size=tiny", f"data.seq_len={args.context}",
                 f"data.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}", f"hydra.run.dir={run_dir}"])
        exports.append(str(run_dir / "export"))

    contexts = [factor * args.context for factor in args.factors]
    eval_dir = args.out.resolve() / "eval"
    run([sys.executable, "-m", "xlstm_lm.cli.eval", f"ckpt=[{','.join(exports)}]",
         f"eval.context_lengths=[{','.join(map(str, contexts))}]", "data.concatenate=true",
         f"hydra.run.dir={eval_dir}"])
    if args.docs:
        for suffix in ("png", "json"):
            shutil.copy(eval_dir / f"eval.{suffix}", REPO / "docs" / f"extrapolation.{suffix}")


if __name__ == "__main__":
    main()
