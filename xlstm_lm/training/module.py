"""The LightningModule that trains a language model with next-token cross-entropy (DESIGN §11).

Hyper-parameters are stored as plain dicts (never live modules), so a checkpoint carries the model
config it needs to be rebuilt and compared.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING

import lightning as L
import torch

from xlstm_lm.models import build_model
from xlstm_lm.training.optim import OptimizerConfig, SchedulerConfig, build_optimizer, lr_factor
from xlstm_lm.training.parallelize import parallelize

if TYPE_CHECKING:
    from xlstm_lm.training.trainer import TrainerConfig


class LanguageModelModule(L.LightningModule):
    """Wraps a plain language model; logs train loss, learning rate, validation loss and perplexity.

    The tokenizer (its JSON) is stored in every checkpoint, so a checkpoint alone can be evaluated. `parallel`
    (the trainer config: activation checkpointing, compile, FSDP) is applied in `configure_model`; it is no
    hyper-parameter, as it changes neither the results nor the checkpoints.
    """

    def __init__(self, model: dict, optimizer: dict, scheduler: dict, max_steps: int,
                 reset_at_doc_starts: bool = True, tokenizer_json: str | None = None,
                 parallel: TrainerConfig | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_json", "parallel"])
        self.tokenizer_json = tokenizer_json
        self.parallel = parallel
        self.optimizer_config = OptimizerConfig(**optimizer)
        self.scheduler_config = SchedulerConfig(**scheduler)
        self.model = build_model(model)
        self.use_doc_starts = reset_at_doc_starts and self.model.supports_doc_starts
        self._val_nll_sum = self._val_tokens = 0.0
        self.last_validated_step = -1  # global step of the latest completed validation

    @classmethod
    def from_configs(cls, model, optimizer: OptimizerConfig, scheduler: SchedulerConfig, max_steps: int,
                     reset_at_doc_starts: bool = True, tokenizer_json: str | None = None,
                     parallel: TrainerConfig | None = None) -> "LanguageModelModule":
        return cls(asdict(model), asdict(optimizer), asdict(scheduler), max_steps, reset_at_doc_starts,
                   tokenizer_json, parallel)

    def configure_model(self):
        """Lightning's hook, in every process once the ranks are up and before the optimizer is built:
        `parallelize` the plain model. Once: Lightning calls it again for a `trainer.validate` after the fit."""
        if self.parallel is not None:
            parallelize(self.model, self.parallel, self.trainer.strategy.root_device)
            self.parallel = None

    def on_save_checkpoint(self, checkpoint):
        checkpoint["tokenizer_json"] = self.tokenizer_json

    def on_load_checkpoint(self, checkpoint):
        self.tokenizer_json = checkpoint.get("tokenizer_json")

    def forward(self, input_ids, doc_starts=None, labels=None, reduction="mean"):
        """Logits, or with labels the next-token cross-entropy in nats (computed without the logits)."""
        return self.model(input_ids, doc_starts=doc_starts if self.use_doc_starts else None, labels=labels,
                          reduction=reduction)

    def training_step(self, batch, batch_idx):
        loss = self(batch["input_ids"], batch.get("doc_starts"), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def on_validation_epoch_start(self):
        self._val_nll_sum = self._val_tokens = 0.0

    def validation_step(self, batch, batch_idx):
        nll = self(batch["input_ids"], batch.get("doc_starts"), batch["labels"], "sum")
        self._val_nll_sum += nll.detach()
        self._val_tokens += batch["labels"].numel()

    def on_validation_epoch_end(self):
        totals = torch.tensor([float(self._val_nll_sum), float(self._val_tokens)], dtype=torch.float64,
                              device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[1] == 0:
            return
        loss = (totals[0] / totals[1]).item()
        self.last_validated_step = self.global_step
        # every rank holds the same global value: synchronized with max, which keeps it exact
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log("val/ppl", math.exp(min(loss, 50.0)), prog_bar=True, sync_dist=True, reduce_fx="max")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the global gradient norm. Under FSDP2 the gradients are DTensor shards, whose norms
        `clip_grad_norm_` combines over the ranks, so the norm stays global."""
        if gradient_clip_val and getattr(self.trainer.precision_plugin, "scaler", None) is None \
                and gradient_clip_algorithm in (None, "norm"):
            # Note: Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
            # gradients itself (fused AdamW) even when, as in bf16, there is no loss scaler to undo
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optimizer_config)
        sched = self.scheduler_config
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, sched.warmup_steps, self.hparams.max_steps, sched.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
