"""Run by test_datamodule_ddp.py as `python ddp_batches.py CONFIGS OUT_DIR STEPS`: two CPU processes (gloo) under
Lightning's `ddp` record the training and validation windows each rank receives, one JSON file per rank.

A subprocess script because Lightning's `ddp` re-runs the launching command in the second process.
"""

import json
import pickle
import sys
from pathlib import Path

import lightning as L
import torch

from xlstm_lm.data import TokenDataModule


class BatchRecorder(L.LightningModule):
    """Keeps the input ids of every batch it is given; its one parameter never changes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch["input_ids"].tolist())
        return self.weight.sum() * 0.0

    def validation_step(self, batch, batch_idx):
        self.seen["val"].extend(batch["input_ids"].tolist())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(configs_file: str, out_dir: str, steps: int) -> None:
    data, tokenizer = pickle.loads(Path(configs_file).read_bytes())
    recorder = BatchRecorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps, val_check_interval=steps,
                        check_val_every_n_epoch=None, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(recorder, datamodule=TokenDataModule(data, tokenizer, seed=11))
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(recorder.seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
