"""The documents of a corpus: listing, reading and the train/validation split (DESIGN.md §10).

A corpus is a folder of text files picked by a glob. The embedded default is the `.py` source of the
standard library of the interpreter that runs the project, so a fresh checkout trains without any download.
Listing is deterministic: files are sorted by their relative POSIX path, read as UTF-8 (undecodable bytes
become U+FFFD, or the file is skipped, by `data.invalid_utf8`; either way it is counted) and empty files are
skipped and counted; binary files (a NUL byte in the first 8 KiB, as `git` and `grep` tell binary from text)
are skipped and named in the log. Folders of installed packages (site-packages, dist-packages) are
never read; test folders only when asked. A document goes to the validation split when a SHA-1 hash of its
relative path, read as a fraction in [0, 1), falls below `val_fraction`, so the split of a file never depends
on which other files exist. When that leaves a split empty, the document nearest the threshold moves; a folder
of one file holds out its tail instead (`tail_split`), which other sources also use when they have too few
documents for a split by hash.
"""

import hashlib
import logging
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from xlstm_lm.data.config import DataConfig
from xlstm_lm.data.files import find_files

logger = logging.getLogger(__name__)

TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})
INSTALLED_PACKAGE_FOLDERS = frozenset({"site-packages", "dist-packages"})
BINARY_PROBE_BYTES = 8192  # a NUL byte among the first ones marks a binary file


@dataclass(frozen=True)
class Document:
    """One text file of the corpus.

    Attributes:
        path: POSIX path relative to the corpus root.
        text: the file decoded as UTF-8.
        num_bytes: size of the file on disk.
    """

    path: str
    text: str
    num_bytes: int


@dataclass(frozen=True)
class Corpus:
    """The documents under a root, split into training and validation.

    Attributes:
        root: absolute folder the documents were read from.
        glob: pattern that picked the files.
        include_tests: whether test folders were read.
        val_fraction: the share of documents asked for in validation.
        train: training documents, sorted by path.
        val: validation documents, sorted by path.
        fingerprint: SHA-256 over the sorted relative paths and the SHA-256 of each file's bytes.
        empty: matching files skipped because they are empty.
        invalid_utf8: matching files that are not valid UTF-8 (replaced or skipped).
    """

    root: Path
    glob: str
    include_tests: bool
    val_fraction: float
    train: tuple[Document, ...]
    val: tuple[Document, ...]
    fingerprint: str
    empty: int = 0
    invalid_utf8: int = 0

    @property
    def splits(self) -> dict[str, tuple[Document, ...]]:
        """The documents of each split by name ("train", "val")."""
        return {"train": self.train, "val": self.val}

    def manifest(self) -> dict[str, Any]:
        """A JSON-ready record of where the documents came from and how many went to each split."""
        return {
            "root": str(self.root),
            "glob": self.glob,
            "include_tests": self.include_tests,
            "val_fraction": self.val_fraction,
            "python_version": sys.version,
            "fingerprint": self.fingerprint,
            "empty": self.empty,
            "invalid_utf8": self.invalid_utf8,
            "splits": {
                name: {
                    "files": len(documents),
                    "bytes": sum(document.num_bytes for document in documents),
                    "paths": [document.path for document in documents],
                }
                for name, documents in self.splits.items()
            },
        }


def default_root() -> Path:
    """The standard library folder of the running interpreter, the embedded default corpus."""
    return Path(sysconfig.get_paths()["stdlib"])


def hash_fraction(relative_path: str) -> float:
    """A stable pseudo-random number in [0, 1) for a relative path (the first 8 bytes of its SHA-1)."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decode_utf8(data: bytes, invalid_utf8: str) -> tuple[Optional[str], bool]:
    """Decode a document's bytes by the `data.invalid_utf8` policy.

    Returns:
        The text (None when the policy skips an invalid document) and whether the bytes were invalid UTF-8.
    """
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return (data.decode("utf-8", errors="replace") if invalid_utf8 == "replace" else None), True


def list_corpus(cfg: DataConfig) -> Corpus:
    """Read the documents picked by `cfg` and split them into training and validation.

    Args:
        cfg: uses root, glob, include_tests, val_fraction and invalid_utf8.

    Returns:
        The corpus; both splits hold at least one document.

    Raises:
        FileNotFoundError: the root does not exist.
        NotADirectoryError: the root is a file.
        ValueError: no non-empty file matches the glob, or only one that is too short to hold out a tail.
    """
    root = _resolve_root(cfg.root)
    excluded = INSTALLED_PACKAGE_FOLDERS if cfg.include_tests else INSTALLED_PACKAGE_FOLDERS | TEST_FOLDERS
    paths = sorted("/".join(parts) for parts in find_files(root, cfg.glob, excluded.__contains__))
    where = f"glob {cfg.glob!r} under {root} (include_tests={cfg.include_tests})"
    if not paths:
        raise ValueError(f"No files match {where}: check data.root and data.glob")
    fingerprint = hashlib.sha256()
    documents, binary = [], []
    empty = invalid = 0
    for relative_path in paths:
        data = (root / relative_path).read_bytes()
        if not data:
            empty += 1
            continue
        if b"\0" in data[:BINARY_PROBE_BYTES]:
            binary.append(relative_path)
            continue
        fingerprint.update(f"{relative_path}\0{hashlib.sha256(data).hexdigest()}\n".encode("utf-8"))
        text, was_invalid = decode_utf8(data, cfg.invalid_utf8)
        invalid += was_invalid
        if text is not None:
            documents.append(Document(relative_path, text, len(data)))
    if binary:
        logger.warning("Skipped %d binary files matching %s (a NUL byte in their first %d bytes): %s", len(binary),
                       where, BINARY_PROBE_BYTES, ", ".join(binary[:5]) + (", ..." if len(binary) > 5 else ""))
    if not documents:
        raise ValueError(f"All {len(paths)} files matching {where} are empty, binary or skipped as invalid UTF-8")
    if len(documents) == 1:
        train, val = _split_one(documents[0], cfg.val_fraction, where)
    else:
        train, val = _split(documents, cfg.val_fraction)
    corpus = Corpus(root, cfg.glob, cfg.include_tests, cfg.val_fraction, train, val, fingerprint.hexdigest(),
                    empty, invalid)
    logger.info(
        "Listed %d documents (%d train, %d val, %.1f MB) matching %s",
        len(documents),
        len(train),
        len(val),
        sum(document.num_bytes for document in documents) / 1e6,
        where,
    )
    return corpus


def _resolve_root(root: Optional[str]) -> Path:
    if root is None:
        return default_root()
    folder = Path(root).expanduser().resolve()
    if not folder.exists():
        raise FileNotFoundError(
            f"Corpus root {folder} does not exist: set data.root to a folder of text files, "
            f"or leave it unset (null) to use the Python standard library at {default_root()}"
        )
    if not folder.is_dir():
        raise NotADirectoryError(f"Corpus root {folder} is a file: set data.root to the folder that holds it")
    return folder


def tail_split(document: Document, val_fraction: float) -> tuple[Optional[Document], Optional[Document]]:
    """Cut a document into a training head and a validation tail of about `val_fraction` of its characters.

    The tail starts at the first line start at or after the cut, so lines stay whole where the text has lines.
    The pieces are named `path[0:cut]` and `path[cut:]` (character offsets, sorting head first); they never overlap.

    Returns:
        (head, tail); a piece that would be empty is None (the whole document is the other piece).
    """
    text = document.text
    cut = round(len(text) * (1 - val_fraction))
    line_start = text.find("\n", max(cut - 1, 0)) + 1
    if 0 < cut <= line_start < len(text):
        cut = line_start
    if cut <= 0:
        return None, document
    if cut >= len(text):
        return document, None
    head, tail = text[:cut], text[cut:]
    return (Document(f"{document.path}[0:{cut}]", head, len(head.encode("utf-8"))),
            Document(f"{document.path}[{cut}:]", tail, len(tail.encode("utf-8"))))


def _split_one(document: Document, val_fraction: float, where: str) -> tuple[tuple[Document], tuple[Document]]:
    """The split of a folder of one file: its head trains, its tail validates."""
    head, tail = tail_split(document, val_fraction)
    if head is None or tail is None:
        raise ValueError(
            f"Only one non-empty file ({document.path}, {len(document.text)} characters) matches {where}, too short "
            f"to hold out its last {val_fraction:.0%} for validation (data.val_fraction={val_fraction}): training and "
            "validation need at least one document each; add files or text, or change data.val_fraction"
        )
    logger.warning("One file matches %s: holding out its last %d of %d characters for validation "
                   "(data.val_fraction=%s)", where, len(tail.text), len(document.text), val_fraction)
    return (head,), (tail,)


def _split(documents: list[Document], val_fraction: float) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """Split by hash of the path; if a split comes out empty, move the document nearest the threshold."""
    fractions = [hash_fraction(document.path) for document in documents]
    in_val = [fraction < val_fraction for fraction in fractions]
    if not any(in_val) or all(in_val):
        moved = fractions.index(min(fractions)) if not any(in_val) else fractions.index(max(fractions))
        in_val[moved] = not in_val[moved]
        logger.warning("data.val_fraction=%s leaves the %s split of %d documents empty: moved %s there (the document "
                       "whose path hash is nearest the threshold)", val_fraction, "val" if in_val[moved] else "train",
                       len(documents), documents[moved].path)
    train = tuple(document for document, is_val in zip(documents, in_val) if not is_val)
    val = tuple(document for document, is_val in zip(documents, in_val) if is_val)
    return train, val
