"""LightningDataModule over a synthetic task (`xlstm_lm.data.synthetic`): batches made on the fly, nothing cached.

Serves the same batch dict as `TokenDataModule` (without doc_starts: each row is one fresh sequence), with
`labels` at `IGNORE_INDEX` except the answers. Training batch k of rank r of W is the split's batch
position + k·W + r, so the order is fixed by the seed, ranks never overlap, and the position (saved in every
checkpoint) is all a resumed run needs. Validation is the first `val_batches` batches of the held-out split.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from xlstm_lm.data.datamodule import ResumableOrder
from xlstm_lm.data.synthetic import TaskConfig, make_batch, vocabulary
from xlstm_lm.data.tokenizer import EOS_TOKEN, vocabulary_tokenizer


class TaskBatches(Dataset):
    """Batch `index` of a split, as tensors (the DataLoader does no batching of its own)."""

    def __init__(self, config: TaskConfig, seed: int, split: str, length: Optional[int] = None,
                 num_batches: int = 2**62) -> None:
        self.config, self.seed, self.split, self.length, self.num_batches = config, seed, split, length, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = make_batch(self.config, self.seed, self.split, index, self.length)
        return {name: torch.from_numpy(array) for name, array in batch.items()}


class TaskDataModule(ResumableOrder):
    """Training and validation batches of a synthetic task, and its fixed-vocabulary tokenizer.

    Args:
        data: the task.
        seed: fixes every batch.
    """

    def __init__(self, data: TaskConfig, seed: int = 0) -> None:
        super().__init__()
        self.data_config = data
        self.seed = seed
        self.tokenizer = vocabulary_tokenizer(vocabulary(data))
        self._resume_position = 0
        self._resume_step = 0

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(EOS_TOKEN)

    @property
    def tokenizer_json(self) -> str:
        """The tokenizer as checkpoints and exports store it."""
        return self.tokenizer.to_str()

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world_size()
        self._resume_step = self.trainer.global_step if self.trainer is not None else 0
        order = itertools.count(self._resume_position + rank, world_size)
        return DataLoader(TaskBatches(self.data_config, self.seed, "train"), batch_size=None, sampler=order)

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world_size()
        batches = TaskBatches(self.data_config, self.seed, "val", num_batches=self.data_config.val_batches)
        return DataLoader(batches, batch_size=None, sampler=range(rank, len(batches), world_size))

    def state_dict(self) -> dict[str, Any]:
        """The next training batch's position, counted over all ranks."""
        position = self._resume_position
        if self.trainer is not None:
            steps = self.trainer.global_step - self._resume_step
            position += steps * self.trainer.accumulate_grad_batches * self._rank_and_world_size()[1]
        return {"position": position, **self._order_identity()}

    def _order_identity(self) -> dict[str, Any]:
        task = {key: value for key, value in asdict(self.data_config).items() if key not in ("val_batches", "test_lengths")}
        return {"seed": self.seed, "task": task}

