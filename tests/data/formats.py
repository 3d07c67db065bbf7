"""Documents written in every local file format the sources read, for the data tests (DESIGN.md §10)."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

TEXTS = ["first document\nwith two lines\n", "zweites Dokument: café, 日本語 🙂", "third\n\n\tdocument"]


def write_formats(folder: Path, texts: list[str]) -> dict[str, Path]:
    """The same documents as JSON lines, Parquet and compressed JSON lines; one plain text file per text."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": text, "id": index}) + "\n" for index, text in enumerate(texts)).encode()
    files = {"jsonl": folder / "docs.jsonl", "gz": folder / "docs.jsonl.gz", "zst": folder / "docs.jsonl.zst",
             "parquet": folder / "docs.parquet"}
    files["jsonl"].write_bytes(lines)
    files["gz"].write_bytes(gzip.compress(lines))
    files["zst"].write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), files["parquet"])
    for index, text in enumerate(texts):
        (folder / "plain").mkdir(exist_ok=True)
        (folder / "plain" / f"{index}.txt").write_text(text, encoding="utf-8")
    (folder / "one.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(texts[0].encode()))
    (folder / "one.txt.gz").write_bytes(gzip.compress(texts[0].encode()))
    return files
