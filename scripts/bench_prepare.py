"""Throughput of data preparation against a plain `tokenizers` batch-encode loop (DESIGN.md §10).

Both read the same files with the same tokenizer on the same number of cores:

    pipeline   `xlstm_lm.data.prepare` with data=files: listing, reading, splitting by hash, tokenizing in
               data.num_proc processes, end-of-document tokens, shards, document index and manifest written
    baseline   read each file, `Tokenizer.encode_batch` over batches of about 1 MB (the tokenizer's own
               thread pool, RAYON_NUM_THREADS = num_proc), ids counted and dropped

Prints a markdown table (MB/s of UTF-8 input, tokens/s) and writes the rows as JSON.

    python scripts/bench_prepare.py                          # the standard library's .py files, every core
    python scripts/bench_prepare.py --files 'data/*.jsonl'   # your own files (text, JSON lines, Parquet)
    python scripts/bench_prepare.py --smoke                  # a small slice on 2 processes, seconds
"""

import argparse
import json
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SMOKE_FILES = str(Path(sysconfig.get_paths()["stdlib"]) / "email" / "*.py")
DEFAULT_FILES = str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")
BASELINE_BATCH_BYTES = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", nargs="+", help="files, folders or globs (default: the stdlib's top-level .py files)")
    parser.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)), help="cores for both")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best is reported")
    parser.add_argument("--smoke", action="store_true", help="a small slice, 2 processes, 1 run")
    parser.add_argument("--json", default="outputs/bench/prepare.json", help="where the rows go")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.smoke:
        args.files, args.num_proc, args.vocab_size, args.repeats = [SMOKE_FILES], 2, 512, 1
    # Note: read when the tokenizer's thread pool starts, so it is set before tokenizers is imported.
    os.environ["RAYON_NUM_THREADS"] = str(args.num_proc)
    from tokenizers import Tokenizer  # noqa: PLC0415

    from xlstm_lm.data import DataConfig, TokenizerConfig, load, prepare, train_tokenizer  # noqa: PLC0415
    from xlstm_lm.data.files import expand_files  # noqa: PLC0415
    from xlstm_lm.data.sources import SourceCounts, read_file  # noqa: PLC0415

    files = expand_files(args.files or [DEFAULT_FILES])
    with tempfile.TemporaryDirectory() as scratch:
        sample = [document.text for file in files[:200] for document in read_file(file, "text", "replace", SourceCounts())]
        tokenizer_file = Path(scratch) / "tokenizer.json"
        train_tokenizer(sample, TokenizerConfig(vocab_size=args.vocab_size)).save(str(tokenizer_file))

        def pipeline(run: int) -> tuple[int, int]:
            data = DataConfig(kind="files", files=[str(file) for file in files], num_proc=args.num_proc,
                              cache_dir=str(Path(scratch) / f"cache{run}"))
            manifest = load(prepare(data, TokenizerConfig(path=str(tokenizer_file)))).manifest
            splits = manifest["splits"].values()
            return sum(split["bytes"] for split in splits), sum(split["tokens"] for split in splits)

        def baseline(run: int) -> tuple[int, int]:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            num_bytes = num_tokens = 0
            batch, batch_bytes = [], 0
            for file in files:
                data = file.read_bytes()
                batch.append(data.decode("utf-8", errors="replace"))
                batch_bytes += len(data)
                if batch_bytes >= BASELINE_BATCH_BYTES or file == files[-1]:
                    num_tokens += sum(len(encoding.ids) + 1 for encoding in tokenizer.encode_batch(batch))
                    num_bytes += batch_bytes
                    batch, batch_bytes = [], 0
            return num_bytes, num_tokens

        rows = [measure(name, function, args.repeats, args.num_proc)
                for name, function in [("baseline", baseline), ("pipeline", pipeline)]]
    rows[1]["vs_baseline"] = round(rows[1]["mb_per_s"] / rows[0]["mb_per_s"], 3)
    print(f"{len(files)} files, {rows[0]['bytes'] / 1e6:.1f} MB, {args.num_proc} cores, vocabulary {args.vocab_size}")
    print(markdown(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


def measure(name: str, function, repeats: int, num_proc: int) -> dict:
    """The best of `repeats` runs of function(run) -> (bytes, tokens)."""
    best = None
    for run in range(repeats):
        start = time.perf_counter()
        num_bytes, num_tokens = function(run)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return {"name": name, "num_proc": num_proc, "bytes": num_bytes, "tokens": num_tokens, "seconds": round(best, 3),
            "mb_per_s": round(num_bytes / best / 1e6, 3), "tokens_per_s": round(num_tokens / best)}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | cores | MB | tokens | s | MB/s | tokens/s | vs baseline |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['num_proc']} | {row['bytes'] / 1e6:.1f} | {row['tokens']:,} | "
                     f"{row['seconds']:.2f} | {row['mb_per_s']:.2f} | {row['tokens_per_s']:,} | "
                     f"{row.get('vs_baseline', 1.0):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
