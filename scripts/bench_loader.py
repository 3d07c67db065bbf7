"""Tokens per second of the training data loader alone (no model), to check that a GPU step never waits for data.

    python scripts/bench_loader.py data.seq_len=2048 data.batch_size=16 --batches 200 --workers 0 2

(Hydra overrides go before --workers, which takes a list.)

Trailing arguments are Hydra overrides of the training config (data=, tokenizer=, data.*); the cache is prepared
first if it is missing. Each row iterates the training loader of rank 0 for --batches batches after one warm-up
batch. Prints a table and writes JSON (default outputs/bench/loader.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from xlstm_lm.cli.schemas import register_configs
from xlstm_lm.data import TokenDataModule

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def measure(datamodule: TokenDataModule, batches: int) -> dict[str, float]:
    """Seconds and tokens per second of `batches` training batches (the first batch, which starts workers, excluded)."""
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        tokens += next(iterator)["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/loader.json"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = OmegaConf.to_object(compose("train", overrides=args.overrides))
    rows = []
    for workers in args.workers:
        data = dataclasses.replace(config.data, num_workers=workers)
        datamodule = TokenDataModule(data, config.tokenizer, seed=config.seed)
        datamodule.prepare_data()
        datamodule.setup("fit")
        rows.append({"workers": workers, "batch_size": data.batch_size, "seq_len": data.seq_len,
                     **measure(datamodule, args.batches)})

    print("| workers | batch x seq_len | batches | seconds | tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['batch_size']} x {row['seq_len']} | {args.batches} | "
              f"{row['seconds']:.2f} | {row['tokens_per_s']:,.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
