"""LightningDataModule over prepared token shards: windows, document-start flags, resumable order (DESIGN.md §10).

Both splits are cut into non-overlapping windows of seq_len + 1 tokens with stride seq_len, so every token
of a split's stream is a label exactly once (except the first). Training windows come in the seeded global
order of `ResumableSampler`, each rank its own share; the position in that order is saved in every
checkpoint (`state_dict`), so a resumed run sees exactly the batches an uninterrupted one would have seen.
Validation windows keep their order, split across ranks without padding (no window is scored twice).

A batch is a dict of (B, S) tensors, S = seq_len:

    input_ids   int64  window[:-1]
    labels      int64  window[1:]
    doc_starts  bool   True where input_ids[t] is the first token of a document: input_ids[t - 1] is the
                       end-of-document token, or for t = 0 the token before the window is (or the window
                       starts the split). Recurrent models reset their memory there (DESIGN.md §4).

With `data.stateful` the training windows come from `StreamSampler` instead (row r of every batch continues
row r of the batch before) and training batches hold one more entry:

    continues   bool (B,)  True where the row's window directly follows the row's window of the previous
                           batch (False at the start of each run): the model carries its state only then.
"""

import os
import signal
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from xlstm_lm.data.cache import PreparedData, load, locate, prepare
from xlstm_lm.data.cache.prepared import TOKENIZER_FILE
from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.sampler import ResumableSampler, StreamSampler
from xlstm_lm.data.shards import ShardedTokens

SPLITS = ("train", "val")


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens over a split's token stream.

    Args:
        tokens: the split's shards; they are memory-mapped lazily in each process, so pickling the dataset
            (DataLoader workers, spawn) never copies tokens.
        seq_len: S, the inputs per window.
        eos_id: the end-of-document token.
        run_length: stateful training: the windows of one stream (`StreamSampler.run_length`); items then
            say whether they continue the window before (`continues`).
    """

    def __init__(self, tokens: ShardedTokens, seq_len: int, eos_id: int, run_length: Optional[int] = None) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.run_length = run_length

    def __len__(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.seq_len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.seq_len
        before = 1 if start > 0 else 0  # the token before the window decides whether it starts a document
        tokens = torch.from_numpy(self.tokens.read(start - before, start + self.seq_len + 1).astype("int64"))
        window = tokens[before:]  # (S + 1,)
        input_ids = window[:-1]  # (S,)
        doc_starts = torch.empty(self.seq_len, dtype=torch.bool)  # (S,)
        doc_starts[0] = not before or bool(tokens[0] == self.eos_id)
        doc_starts[1:] = input_ids[:-1] == self.eos_id
        item = {"input_ids": input_ids, "labels": window[1:], "doc_starts": doc_starts}
        if self.run_length is not None:
            item["continues"] = torch.tensor(index % self.run_length != 0)
        return item


class ResumableOrder(L.LightningDataModule):
    """What every data module of training shares: its training order resumes from a checkpoint's position, and is
    refused when `_order_identity()` (the subclass's: what fixes the order besides the position) differs."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the training order; refuses a checkpoint made with other data, windows or seed."""
        self.check_resumable(state)
        self._resume_position = int(state["position"])

    def check_resumable(self, state: dict[str, Any]) -> None:
        """Raise ValueError unless `state` (from `state_dict`, as a checkpoint holds it) has this run's order."""
        current = self._order_identity()
        # a key the checkpoint lacks is a change too; so is a stateful checkpoint resumed without data.stateful
        changed = changed_settings(state, current, keys=dict.fromkeys([*current, "stateful"]))
        if changed:
            raise ValueError(
                f"The checkpoint's training data order does not fit this run ({'; '.join(changed)}), so resuming "
                "would repeat or skip data. Resume with the same data=, tokenizer=, data.seq_len and seed as the "
                "original run (and data.stateful, with its data.batch_size), or start a new run from its weights."
            )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


class TokenDataModule(ResumableOrder):
    """Prepares the cache once per node and serves token windows of both splits.

    Args:
        data: corpus, windowing and loader settings.
        tokenizer: tokenizer settings.
        seed: fixes the order of the training windows.
    """

    def __init__(self, data: DataConfig, tokenizer: TokenizerConfig, seed: int = 0) -> None:
        super().__init__()
        self.data_config = data
        self.tokenizer_config = tokenizer
        self.seed = seed
        self._prepared: Optional[PreparedData] = None
        self._prepared_path: Optional[Path] = None  # set by prepare_data, so this process lists the sources once
        self._windows: dict[str, TokenWindows] = {}
        self._resume_position = 0  # global position of the first training window of this process's run
        self._resume_step = 0  # trainer.global_step when the training loader was made

    def prepare_data(self) -> None:
        """Build the cache unless it exists (Lightning calls this on one process per node)."""
        self._prepared_path = prepare(self.data_config, self.tokenizer_config)

    def setup(self, stage: Optional[str] = None) -> None:
        """Memory-map both splits; raises ValueError if a split is too short for the loaders."""
        prepared = self._opened()
        seq_len, batch_size = self.data_config.seq_len, self.data_config.batch_size
        self._windows = {
            split: TokenWindows(prepared.split_tokens(split), seq_len, prepared.eos_id) for split in SPLITS
        }
        if len(self._windows["val"]) < 1:
            raise ValueError(
                f"The validation split has {len(self._windows['val'].tokens)} tokens, too few for one window of "
                f"seq_len + 1 = {seq_len + 1}: lower data.seq_len or raise data.val_fraction"
            )
        if len(self._windows["train"]) < batch_size:
            raise ValueError(
                f"The training split has {len(self._windows['train'])} windows of seq_len = {seq_len}, fewer than "
                f"one batch of {batch_size}: lower data.seq_len or data.batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        """Endless training batches of this rank, from the saved position when resuming."""
        windows = self._split_windows("train")
        rank, world_size = self._rank_and_world_size()
        self._resume_step = self.trainer.global_step if self.trainer is not None else 0
        sampler_class = StreamSampler if self.data_config.stateful else ResumableSampler
        sampler = sampler_class(len(windows), self.data_config.batch_size, self.seed, rank, world_size,
                                start=self._resume_position)
        if self.data_config.stateful:
            windows = TokenWindows(windows.tokens, windows.seq_len, windows.eos_id, sampler.run_length)
        return self._loader(windows, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation windows in order; rank r of W takes windows r, r + W, ... (each window scored once)."""
        windows = self._split_windows("val")
        rank, world_size = self._rank_and_world_size()
        if len(windows) < world_size:
            raise ValueError(
                f"The validation split has {len(windows)} windows for {world_size} processes: every process needs "
                "one; lower data.seq_len or raise data.val_fraction"
            )
        return self._loader(windows, range(rank, len(windows), world_size))

    def state_dict(self) -> dict[str, Any]:
        """The position in the global training order reached by the trainer's completed optimizer steps."""
        position = self._resume_position
        if self.trainer is not None:
            steps = self.trainer.global_step - self._resume_step
            _, world_size = self._rank_and_world_size()
            micro_batches = steps * self.trainer.accumulate_grad_batches
            position += micro_batches * self.data_config.batch_size * world_size
        return {"position": position, **self._order_identity()}

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the token shards were made with."""
        return self._opened().tokenizer

    @property
    def tokenizer_json(self) -> str:
        """The cache's tokenizer.json, as checkpoints and exports store it."""
        return (self.cache_path / TOKENIZER_FILE).read_text()

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
        """The cache's manifest: sources, counts per split, dtype, tokenizer hash."""
        return self._opened().manifest

    def __getstate__(self) -> dict[str, Any]:
        # Note: reopened lazily after unpickling (ddp_spawn), since a pickled tokenizer loses encode_special_tokens.
        state = dict(self.__dict__)
        state["_prepared"] = None
        return state

    def _opened(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = load(self._prepared_path or locate(self.data_config, self.tokenizer_config))
        return self._prepared

    def _order_identity(self) -> dict[str, Any]:
        """What fixes the training order besides the position: a resumed run must match it."""
        identity = {"seed": self.seed, "seq_len": self.data_config.seq_len,
                    "train_windows": len(self._split_windows("train")), "cache": self.cache_path.name}
        if self.data_config.stateful:  # the streams are cut by the rows (the processes: LanguageModelModule)
            identity.update(stateful=True, batch_size=self.data_config.batch_size)
        return identity

    def _split_windows(self, split: str) -> TokenWindows:
        if split not in self._windows:
            raise RuntimeError("call setup() before asking for a dataloader")
        return self._windows[split]

    def _loader(self, windows: TokenWindows, sampler) -> DataLoader:
        num_workers = self.data_config.num_workers
        return DataLoader(
            windows,
            batch_size=self.data_config.batch_size,
            sampler=sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=partial(_init_worker, rank=self._rank_and_world_size()[0]),
        )


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str],
                     prefix: str = "", saved_in: str = "checkpoint") -> list[str]:
    """`<prefix><key>: <saved_in> <saved value> vs now <current value>` for each of `keys` whose value differs: the
    items of every "this checkpoint (or model folder) does not fit this run" error, the data order's here, the
    model's and optimizer's in `xlstm_lm.training.checkpointing`, init_from's in `xlstm_lm.cli.train`. Each caller
    says which keys count."""
    return [f"{prefix}{key}: {saved_in} {saved.get(key)!r} vs now {current.get(key)!r}"
            for key in keys if saved.get(key) != current.get(key)]


def _init_worker(worker_id: int, rank: int) -> None:
    """DataLoader workers ignore Ctrl-C, which reaches the whole process group: the main process turns it into a
    checkpoint and a clean stop, and needs its workers for that. Seeded as Lightning seeds workers (which it
    does only for loaders without a worker_init_fn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)
