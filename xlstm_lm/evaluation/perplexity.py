"""Long-context perplexity: each document scored in non-overlapping windows of a context length (DESIGN.md §12).

A document becomes [EOS] + its n tokens + [EOS]: the end-of-document token that separates documents in the
training data opens it, so every token of the text is a label, and each of the n + 1 labels is scored
exactly once, with the training loss (`F.cross_entropy` on float32 logits). For a context length L the
labels are cut into consecutive windows of L (the last one of a document shorter), each scored from a
fresh state; `join_documents` turns the documents into one stream for windows longer than any document. Recurrent models run a window in pieces of `piece_length` tokens with the state carried, so
memory does not grow with L (the result equals one pass; tested); the Transformer runs one pass of full
attention, and a context longer than `max_attention_tokens` is skipped, not crashed.

Per context length:

    loss            = sum NLL / tokens  (nats)          perplexity = exp(loss)
    bits_per_byte   = sum NLL / (ln 2 · UTF-8 bytes of the text the scored tokens cover)
    loss_by_position: mean NLL of the labels at window positions p = 1, 2-3, 4-7, ... (p = tokens seen)
"""

from __future__ import annotations

import functools
import logging
import math
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from xlstm_lm.data.corpus import Document
from xlstm_lm.data.tokenizer import eos_id
from xlstm_lm.models import LanguageModel

logger = logging.getLogger(__name__)


@dataclass
class PerplexityConfig:
    """How windows are scored.

    Attributes:
        context_lengths: window lengths in tokens, each scored separately.
        piece_length: tokens per forward pass of a recurrent model (the state is carried between pieces).
        batch_size: windows of equal length scored together.
        max_attention_tokens: longest window the Transformer scores (one pass of full attention).
    """

    context_lengths: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    piece_length: int = 2048
    batch_size: int = 1
    max_attention_tokens: int = 16384

    def __post_init__(self) -> None:
        if not self.context_lengths:
            raise ValueError("eval.context_lengths is empty: give window lengths such as [512,2048,8192]")
        bad = [length for length in self.context_lengths
               if isinstance(length, bool) or not isinstance(length, int) or length < 1]
        if bad:
            raise ValueError(f"eval.context_lengths must be positive integers, got {bad}")
        for name in ("piece_length", "batch_size", "max_attention_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True)
class EncodedDocument:
    """A document as token ids, with the bytes of text each label covers.

    Attributes:
        path: where the document came from.
        ids: (n + 2,) int64: EOS, the document's n tokens, EOS.
        label_bytes: (n + 1,) int64: UTF-8 bytes of the text covered by label ids[t + 1] (0 for EOS).
    """

    path: str
    ids: torch.Tensor
    label_bytes: torch.Tensor

    @property
    def num_labels(self) -> int:
        return len(self.label_bytes)


@dataclass
class PositionBucket:
    """Mean loss of the labels at window positions first..last (position p: the label follows p inputs)."""

    first: int
    last: int
    loss: float
    tokens: int


@dataclass
class ContextResult:
    """The scores of one context length; `skipped` says why a context was not scored (the numbers are None)."""

    context_length: int
    loss: Optional[float] = None
    perplexity: Optional[float] = None
    bits_per_byte: Optional[float] = None
    tokens: int = 0
    bytes: int = 0
    windows: int = 0
    longest_window: int = 0
    seconds: Optional[float] = None
    tokens_per_second: Optional[float] = None
    peak_memory_mib: Optional[float] = None
    loss_by_position: list[PositionBucket] = field(default_factory=list)
    note: Optional[str] = None
    skipped: Optional[str] = None


def encode_documents(documents: Sequence[Document], tokenizer: Tokenizer) -> list[EncodedDocument]:
    """Tokenize documents between end-of-document tokens and count the bytes each token covers.

    Args:
        documents: the texts.
        tokenizer: the checkpoint's tokenizer (must have the end-of-document token).

    Returns:
        One EncodedDocument per document, in order.
    """
    eos = eos_id(tokenizer)
    encodings = tokenizer.encode_batch([document.text for document in documents])
    encoded = []
    for document, encoding in zip(documents, encodings):
        ids = torch.tensor([eos, *encoding.ids, eos], dtype=torch.int64)
        token_bytes = token_byte_counts(document.text, encoding.offsets)
        label_bytes = torch.from_numpy(np.append(token_bytes, 0))
        encoded.append(EncodedDocument(document.path, ids, label_bytes))
    return encoded


def join_documents(documents: Sequence[EncodedDocument]) -> EncodedDocument:
    """One stream EOS doc1 EOS doc2 ... EOS: the same labels (and bytes) as the documents, in one sequence."""
    ids = torch.cat([document.ids[:-1] for document in documents] + [documents[-1].ids[-1:]])
    label_bytes = torch.cat([document.label_bytes for document in documents])
    return EncodedDocument(f"{len(documents)} documents joined", ids, label_bytes)


def token_byte_counts(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """UTF-8 bytes of `text` first covered by each token.

    Note: a byte-level BPE token may hold part of a character, and then both halves report the character's
    span; each character is counted for the first token that covers it, so the counts sum to the bytes of
    the text the tokens cover.

    Args:
        text: the encoded text.
        offsets: (start, end) character offsets of the tokens, as the tokenizer reports them.

    Returns:
        (n,) int64 byte counts.
    """
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    char_bytes = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(char_bytes)])  # byte offset of each character
    spans = np.asarray(offsets, dtype=np.int64)
    covered_before = np.maximum.accumulate(np.concatenate([[0], spans[:-1, 1]]))
    starts = np.maximum(spans[:, 0], covered_before)
    return np.maximum(byte_at[spans[:, 1]] - byte_at[np.minimum(starts, spans[:, 1])], 0)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in nats, the training loss unreduced; logits (B, S, V), labels (B, S) -> (B, S)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view(labels.shape)


@torch.inference_mode()
def score_window(model: LanguageModel, input_ids: torch.Tensor, labels: torch.Tensor,
                 piece_length: Optional[int] = None) -> torch.Tensor:
    """NLL of every label of a window, from a fresh state.

    Args:
        model: any language model of the project.
        input_ids: (B, S) token ids.
        labels: (B, S) the next tokens.
        piece_length: run the window in pieces of this many tokens with the state carried (recurrent
            models); None runs one pass.

    Returns:
        (B, S) float32 NLL in nats.
    """
    pieces, start = [], 0
    for logits in forward_pieces(model, input_ids, piece_length):
        pieces.append(token_nll(logits, labels[:, start:start + logits.shape[1]]))
        start += logits.shape[1]
    return torch.cat(pieces, dim=1)


def forward_pieces(model: LanguageModel, input_ids: torch.Tensor,
                   piece_length: Optional[int] = None) -> Iterator[torch.Tensor]:
    """The logits of a window from a fresh state, piece by piece: (B, piece, V) for consecutive pieces of
    `piece_length` tokens of `input_ids` (B, S), the state carried between them; None yields one pass."""
    if piece_length is None:
        yield model(input_ids)
        return
    state = None
    for start in range(0, input_ids.shape[1], piece_length):
        logits, state = model(input_ids[:, start:start + piece_length], state=state, return_state=True)
        yield logits


def position_buckets(length: int) -> list[tuple[int, int]]:
    """Log-spaced position ranges covering 1..length: (1, 1), (2, 3), (4, 7), ..., the last cut at length.

    A last range holding only position `length` (a power of two) joins the range before it: one token per
    window is too few to plot as a point of its own.
    """
    buckets = [(2**k, min(2 ** (k + 1) - 1, length)) for k in range(length.bit_length())]
    if len(buckets) > 1 and buckets[-1][0] == length:
        buckets[-2:] = [(buckets[-2][0], length)]
    return buckets


def window_spans(documents: Sequence[EncodedDocument], context_length: int) -> list[tuple[int, int, int]]:
    """Consecutive non-overlapping windows over each document's labels: (document index, first label, length)."""
    return [(index, start, min(context_length, document.num_labels - start))
            for index, document in enumerate(documents)
            for start in range(0, document.num_labels, context_length)]


def evaluate_context(model: LanguageModel, documents: Sequence[EncodedDocument], context_length: int,
                     cfg: PerplexityConfig, device: torch.device | str = "cpu") -> ContextResult:
    """Score every document in windows of `context_length` tokens.

    Args:
        model: the model, in eval mode on `device`.
        documents: from `encode_documents` with the model's tokenizer.
        context_length: window length in tokens.
        cfg: piece length, batch size and the Transformer's attention limit.
        device: where the windows go.

    Returns:
        The scores, or a result with `skipped` set when the Transformer cannot attend that far or memory ran out.
    """
    device = torch.device(device)
    spans = window_spans(documents, context_length)
    longest = max(length for _, _, length in spans)
    result = ContextResult(context_length, windows=len(spans), longest_window=longest)
    if longest < context_length:
        result.note = (f"all documents are shorter than the context: the longest window scored has {longest} "
                       f"tokens, not {context_length}")
        logger.warning("context %d: %s", context_length, result.note)
    recurrent = getattr(model, "is_recurrent", True)
    if not recurrent and longest > cfg.max_attention_tokens:
        result.skipped = (f"skipped: context exceeds the attention limit ({longest} > "
                          f"eval.max_attention_tokens={cfg.max_attention_tokens})")
        logger.warning("context %d: %s", context_length, result.skipped)
        return result

    nll_sum, byte_sum = 0.0, 0
    bucket_of = torch.log2(torch.arange(1, longest + 1, dtype=torch.float64)).floor().long()  # (longest,)
    bucket_nll = torch.zeros(longest.bit_length(), dtype=torch.float64)
    bucket_tokens = torch.zeros(longest.bit_length(), dtype=torch.int64)
    memory = PeakMemory(device)
    start_time = time.perf_counter()
    try:
        with memory, tqdm(total=sum(length for _, _, length in spans), unit="tok",
                          desc=f"context {context_length}") as progress:
            for batch in _equal_length_batches(spans, cfg.batch_size):
                length = batch[0][2]
                window = torch.stack([documents[index].ids[start:start + length + 1] for index, start, _ in batch])
                nll = score_window(model, window[:, :-1].to(device), window[:, 1:].to(device),
                                   cfg.piece_length if recurrent else None).double().cpu()  # (B, length)
                nll_sum += nll.sum().item()
                byte_sum += sum(int(documents[index].label_bytes[start:start + length].sum())
                                for index, start, _ in batch)
                bucket_nll.index_add_(0, bucket_of[:length], nll.sum(0))
                bucket_tokens.index_add_(0, bucket_of[:length], torch.full((length,), len(batch)))
                progress.update(length * len(batch))
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()  # give the next context length the memory back
        result.skipped = f"skipped: out of memory ({str(error).splitlines()[0][:120]})"
        logger.warning("context %d: %s", context_length, result.skipped)
        return result
    result.seconds = time.perf_counter() - start_time
    result.tokens = int(bucket_tokens.sum())
    result.bytes = byte_sum
    result.loss = nll_sum / result.tokens
    result.perplexity = math.exp(min(result.loss, 700.0))
    result.bits_per_byte = nll_sum / (math.log(2) * byte_sum) if byte_sum else None
    result.tokens_per_second = result.tokens / result.seconds
    result.peak_memory_mib = memory.mib
    result.loss_by_position = [
        PositionBucket(first, last, float(bucket_nll[k] / bucket_tokens[k]), int(bucket_tokens[k]))
        for k, (first, last) in enumerate(position_buckets(longest))
    ]
    return result


def _equal_length_batches(spans: list[tuple[int, int, int]], batch_size: int):
    """Batches of up to `batch_size` windows of one length, longest first (stable within a length)."""
    ordered = sorted(spans, key=lambda span: -span[2])
    for _, group in groupby(ordered, key=lambda span: span[2]):
        group = list(group)
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


class PeakMemory:
    """Context manager: the extra memory (MiB) the code inside took at its peak, in `mib`.

    On a GPU the peak of `torch.cuda.max_memory_allocated`; on a CPU the process's peak resident memory,
    which Linux lets us reset (VmHWM via /proc/self/clear_refs); elsewhere the growth of getrusage's max RSS.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: Optional[float] = None
        self._before = 0.0

    @staticmethod
    def describe(device: torch.device) -> str:
        """What `mib` measures on this device and platform."""
        if device.type == "cuda":
            return "peak CUDA memory allocated while scoring minus before (torch.cuda.max_memory_allocated)"
        if _can_reset_peak_rss():
            return "peak resident memory while scoring minus before (Linux VmHWM, reset per row)"
        return "growth of the process's peak resident memory (getrusage ru_maxrss; 0 if an earlier row peaked higher)"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device) / 2**20
        elif _can_reset_peak_rss():
            Path("/proc/self/clear_refs").write_text("5")
            self._before = _proc_status_mib("VmRSS")
        else:
            self._before = _max_rss_mib()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif _can_reset_peak_rss():
            peak = _proc_status_mib("VmHWM")
        else:
            peak = _max_rss_mib()
        self.mib = max(peak - self._before, 0.0)


@functools.cache
def _can_reset_peak_rss() -> bool:
    """Whether this process may reset its peak resident memory (Linux, /proc/self/clear_refs writable)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_mib(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024


def _max_rss_mib() -> float:
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 1024  # bytes on macOS, KiB elsewhere
