"""LightningDataModule over prepared token arrays: windows with document-start flags (DESIGN.md §10).

Both splits are cut into non-overlapping windows of seq_len + 1 tokens with stride seq_len, so every token
of the flat array is a label exactly once (except the first). Training windows are shuffled by the
DataLoader, which Lightning wraps in a DistributedSampler under DDP; validation windows keep their order.

A batch is a dict of (B, S) tensors, S = seq_len:

    input_ids   int64  window[:-1]
    labels      int64  window[1:]
    doc_starts  bool   True where input_ids[t] is the first token of a document: input_ids[t - 1] is the
                       end-of-document token, or for t = 0 the token before the window is (or the window
                       starts the array). Recurrent models reset their memory there (DESIGN.md §4).
"""

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from xlstm_lm.data.cache import PreparedData, load, locate, prepare
from xlstm_lm.data.config import DataConfig, TokenizerConfig

SPLITS = ("train", "val")


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens over a flat token file.

    The file is memory-mapped lazily in each process, so pickling the dataset (DataLoader workers, spawn)
    never copies the tokens.

    Args:
        file: raw binary token array.
        dtype: its element type.
        seq_len: S, the inputs per window.
        eos_id: the end-of-document token.
    """

    def __init__(self, file: Path, dtype: np.dtype, seq_len: int, eos_id: int) -> None:
        self.file = file
        self.dtype = dtype
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.num_tokens = file.stat().st_size // dtype.itemsize
        self._tokens: Optional[np.memmap] = None

    def __len__(self) -> int:
        return max(self.num_tokens - 1, 0) // self.seq_len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        if self._tokens is None:
            self._tokens = np.memmap(self.file, dtype=self.dtype, mode="r")
        start = index * self.seq_len
        window = torch.from_numpy(self._tokens[start : start + self.seq_len + 1].astype(np.int64))  # (S + 1,)
        input_ids = window[:-1]  # (S,)
        doc_starts = torch.empty(self.seq_len, dtype=torch.bool)  # (S,)
        doc_starts[0] = bool(start == 0 or self._tokens[start - 1] == self.eos_id)
        doc_starts[1:] = input_ids[:-1] == self.eos_id
        return {"input_ids": input_ids, "labels": window[1:], "doc_starts": doc_starts}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state


class TokenDataModule(L.LightningDataModule):
    """Prepares the cache once per node and serves token windows of both splits.

    Args:
        data: corpus, windowing and loader settings.
        tokenizer: tokenizer settings.
    """

    def __init__(self, data: DataConfig, tokenizer: TokenizerConfig) -> None:
        super().__init__()
        self.data_config = data
        self.tokenizer_config = tokenizer
        self._prepared: Optional[PreparedData] = None
        self._windows: dict[str, TokenWindows] = {}

    def prepare_data(self) -> None:
        """Build the cache unless it exists (Lightning calls this on one process per node)."""
        prepare(self.data_config, self.tokenizer_config)

    def setup(self, stage: Optional[str] = None) -> None:
        """Memory-map both splits; raises ValueError if a split is too short for the loaders."""
        prepared = self._opened()
        seq_len, batch_size = self.data_config.seq_len, self.data_config.batch_size
        self._windows = {
            split: TokenWindows(prepared.tokens_file(split), prepared.dtype, seq_len, prepared.eos_id)
            for split in SPLITS
        }
        if len(self._windows["val"]) < 1:
            raise ValueError(
                f"The validation split has {self._windows['val'].num_tokens} tokens, too few for one window of "
                f"seq_len + 1 = {seq_len + 1}: lower data.seq_len or raise data.val_fraction"
            )
        if len(self._windows["train"]) < batch_size:
            raise ValueError(
                f"The training split has {len(self._windows['train'])} windows of seq_len = {seq_len}, fewer than "
                f"one batch of {batch_size}: lower data.seq_len or data.batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training windows; the last incomplete batch is dropped so every batch is (B, S)."""
        return self._loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Validation windows in order, all of them."""
        return self._loader("val", shuffle=False, drop_last=False)

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the token arrays were made with."""
        return self._opened().tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, the end-of-document token included."""
        return self._opened().vocab_size

    @property
    def eos_id(self) -> int:
        """Id of the end-of-document token."""
        return self._opened().eos_id

    @property
    def cache_path(self) -> Path:
        """The prepared cache folder."""
        return self._opened().path

    @property
    def manifest(self) -> dict[str, Any]:
        """The cache's manifest: sources, python version, counts per split, dtype, tokenizer hash."""
        return self._opened().manifest

    def __getstate__(self) -> dict[str, Any]:
        # Note: reopened lazily after unpickling (ddp_spawn), since a pickled tokenizer loses encode_special_tokens.
        state = dict(self.__dict__)
        state["_prepared"] = None
        return state

    def _opened(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = load(locate(self.data_config, self.tokenizer_config))
        return self._prepared

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> DataLoader:
        if split not in self._windows:
            raise RuntimeError("call setup() before asking for a dataloader")
        num_workers = self.data_config.num_workers
        return DataLoader(
            self._windows[split],
            batch_size=self.data_config.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
