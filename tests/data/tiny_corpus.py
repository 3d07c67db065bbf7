"""A tiny generated corpus for the data tests: varied text, unicode, odd bytes and files to skip (DESIGN.md §10)."""

import random
from pathlib import Path

from xlstm_lm.data import DataConfig, TokenizerConfig

NUM_PLAIN_DOCUMENTS = 36
VOCAB_SIZE = 384
WORDS = [
    "alpha", "beta", "gamma", "return", "def", "class", "self", "value", "naïve", "café", "straße", "日本語",
    "テキスト", "Ελληνικά", "мир", "مرحبا", "🙂", "🚀x", "e\u0301", "x²", "∑", "\u00a0", "tab\tbed", "0x1F",
]
# Files the default settings must skip: other extension, empty, or under an excluded folder.
SKIPPED_FILES = {
    "README.md": b"# not matched by the glob\n",
    "empty.txt": b"",
    "tests/excluded.txt": b"<<doc tests>>\nin a tests folder\n",
    "test/excluded.txt": b"<<doc test>>\nin a test folder\n",
    "sub/idle_test/excluded.txt": b"<<doc idle>>\nin an idle_test folder\n",
    "site-packages/pkg/installed.txt": b"<<doc installed>>\ninstalled package\n",
}


def document_text(index: int, rng: random.Random) -> str:
    """A document of code, prose or odd whitespace (by index), opening with a <<doc NAME>> marker."""
    lines = [f"<<doc d{index:02d}>>"]
    for line in range(rng.randint(15, 40)):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
        if index % 3 == 0:
            lines.append(f"def f_{index}_{line}(x):\n\treturn x * {line}  # {words}")
        elif index % 3 == 1:
            lines.append(f"{words.capitalize()}, {rng.random():.3f}.")
        else:
            lines.append(f"  {words}   \t\r")
    return "\n".join(lines) + "\n" * rng.randint(0, 3)


def write_corpus(folder: Path) -> Path:
    """Write the tiny corpus into folder: plain documents, special cases and files to skip."""
    rng = random.Random(20240611)
    files = {
        f"{('a/', 'a/b/', 'notes/', '')[index % 4]}doc{index:02d}.txt": document_text(index, rng).encode("utf-8")
        for index in range(NUM_PLAIN_DOCUMENTS)
    }
    files["literal_eos.txt"] = "<<doc eos>>\nthe text <|endoftext|> is not a boundary\n".encode("utf-8")
    files["bad_utf8.txt"] = b"<<doc bad>>\ncaf\xe9 \xff\xfe still read\n"
    files.update(SKIPPED_FILES)
    for relative_path, data in files.items():
        file = folder / relative_path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
    return folder


def tiny_configs(corpus: Path, cache_dir: Path, **data_overrides) -> tuple[DataConfig, TokenizerConfig]:
    """Configs over the tiny corpus: .txt files, 20% validation, short windows, small vocabulary."""
    data = dict(
        root=str(corpus),
        glob="**/*.txt",
        val_fraction=0.2,
        seq_len=16,
        batch_size=4,
        num_proc=1,
        cache_dir=str(cache_dir),
    )
    data.update(data_overrides)
    return DataConfig(**data), TokenizerConfig(vocab_size=VOCAB_SIZE)
