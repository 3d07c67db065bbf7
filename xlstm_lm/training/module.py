"""The LightningModule that trains a language model with next-token cross-entropy (DESIGN §11); on a synthetic
task, whose labels mark the answers, the loss is on the answers and validation also reports their accuracy.

Hyper-parameters are stored as plain dicts (never live modules), so a checkpoint carries the model
config it needs to be rebuilt and compared.

Stateful training (`data.stateful`, truncated backpropagation through time): each batch row continues the
row of the batch before (`continues`), so the model starts a training window from the detached recurrent
state the previous window ended in, and resets it at document starts (`doc_starts`) as within a window.
Every checkpoint holds the carried states of every rank's rows, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from lightning_utilities.core.apply_func import apply_to_collection

from xlstm_lm.models import MODELS, build_model
from xlstm_lm.models.head_loss import IGNORE_INDEX, answer_hits
from xlstm_lm.training.optim import OptimizerConfig, SchedulerConfig, build_optimizer, lr_factor
from xlstm_lm.training.parallelize import parallelize

if TYPE_CHECKING:
    from xlstm_lm.training.trainer import TrainerConfig

CARRIED_STATE_KEY = "carried_state"  # checkpoint entry: per rank, the states its rows carry into the next window


def check_stateful(architecture: str, stateful: bool) -> None:
    """Refuse data.stateful=true for a model without a fixed-size recurrent state; the training CLI calls it
    before any data work, the module again for runs built without the CLI."""
    if stateful and not MODELS[architecture][1].is_recurrent:
        raise ValueError(
            f"data.stateful=true carries a fixed-size recurrent state from window to window, and "
            f"model={architecture} has none (its state is a KV cache that would grow without end): "
            "train it with data.stateful=false, or choose a recurrent model (xlstm, xlstm_large, lstm)")


class LanguageModelModule(L.LightningModule):
    """Wraps a plain language model; logs train loss, learning rate, validation loss and perplexity.

    The tokenizer (its JSON) is stored in every checkpoint, so a checkpoint alone can be evaluated. `parallel`
    (the trainer config: activation checkpointing, compile, FSDP) is applied in `configure_model`; it is no
    hyper-parameter, as it changes neither the results nor the checkpoints.
    """

    def __init__(self, model: dict, optimizer: dict, scheduler: dict, max_steps: int,
                 reset_at_doc_starts: bool = True, tokenizer_json: str | None = None,
                 parallel: TrainerConfig | None = None, stateful: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_json", "parallel"])
        self.tokenizer_json = tokenizer_json
        self.parallel = parallel
        self.optimizer_config = OptimizerConfig(**optimizer)
        self.scheduler_config = SchedulerConfig(**scheduler)
        self.model = build_model(model)
        self.use_doc_starts = reset_at_doc_starts and self.model.supports_doc_starts
        check_stateful(model["architecture"], stateful)
        self.carried_state = None  # stateful: the detached states this rank's rows ended the last window in
        self._loaded_states: list | None = None  # stateful: every rank's carried states, from the resumed checkpoint
        self._val_nll_sum = self._val_tokens = 0.0
        self.last_validated_step = -1  # global step of the latest completed validation

    @classmethod
    def from_configs(cls, model, optimizer: OptimizerConfig, scheduler: SchedulerConfig, max_steps: int,
                     reset_at_doc_starts: bool = True, tokenizer_json: str | None = None,
                     parallel: TrainerConfig | None = None, stateful: bool = False) -> "LanguageModelModule":
        return cls(asdict(model), asdict(optimizer), asdict(scheduler), max_steps, reset_at_doc_starts,
                   tokenizer_json, parallel, stateful)

    def configure_model(self):
        """Lightning's hook, in every process once the ranks are up and before the optimizer is built:
        `parallelize` the plain model. Once: Lightning calls it again for a `trainer.validate` after the fit."""
        if self.parallel is not None:
            parallelize(self.model, self.parallel, self.trainer.strategy.root_device)
            self.parallel = None

    def on_save_checkpoint(self, checkpoint):
        """Adds the tokenizer and, when stateful, every rank's carried states (gathered: every rank saves)."""
        checkpoint["tokenizer_json"] = self.tokenizer_json
        if self.hparams.stateful:
            checkpoint[CARRIED_STATE_KEY] = self._every_rank_carried_state()

    def on_load_checkpoint(self, checkpoint):
        self.tokenizer_json = checkpoint.get("tokenizer_json")
        self._loaded_states = checkpoint.get(CARRIED_STATE_KEY)

    def on_train_start(self):
        """Resuming a stateful run: take this rank's carried states from the checkpoint (ranks and devices are
        known only now)."""
        if self._loaded_states is None:
            return
        if len(self._loaded_states) != self.trainer.world_size:
            raise ValueError(
                f"the checkpoint carries the recurrent states of {len(self._loaded_states)} processes and this run "
                f"has {self.trainer.world_size}: data.stateful=true resumes on as many processes as it was trained "
                "on (trainer.devices, trainer.num_nodes)")
        self.carried_state = apply_to_collection(self._loaded_states[self.global_rank], torch.Tensor,
                                                 torch.Tensor.to, self.device)
        self._loaded_states = None

    def forward(self, input_ids, doc_starts=None, labels=None, reduction="mean", state=None, return_state=False):
        """Logits, or with labels the next-token cross-entropy in nats (computed without the logits); from
        `state` and with the new state when `return_state` (the model's own arguments)."""
        return self.model(input_ids, doc_starts=doc_starts if self.use_doc_starts else None, labels=labels,
                          reduction=reduction, state=state, return_state=return_state)

    def training_step(self, batch, batch_idx):
        if self.hparams.stateful:
            loss = self._stateful_loss(batch)
        else:
            loss = self(batch["input_ids"], batch.get("doc_starts"), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def _stateful_loss(self, batch) -> torch.Tensor:
        """The loss of a window that starts from the carried state where the rows continue (they start their
        streams together: `StreamSampler`), and keeps the new state, detached, for the next window."""
        state = self.carried_state if bool(batch["continues"].all()) else None
        loss, state = self(batch["input_ids"], batch.get("doc_starts"), batch["labels"], state=state,
                           return_state=True)
        finite = bool(torch.isfinite(loss))  # a step LossGuard skips must not leave a NaN state to the next window
        self.carried_state = apply_to_collection(state, torch.Tensor, torch.Tensor.detach) if finite else None
        return loss

    def _every_rank_carried_state(self) -> list:
        """Per rank, its carried states on the CPU (a collective: every rank calls it when a checkpoint is saved)."""
        if self.trainer.world_size == 1:
            return [apply_to_collection(self.carried_state, torch.Tensor, torch.Tensor.cpu)]
        gathered = self.all_gather(self.carried_state)  # each tensor (W, ...)
        return [apply_to_collection(gathered, torch.Tensor, lambda tensor, rank=rank: tensor[rank].cpu())
                for rank in range(self.trainer.world_size)]

    def on_validation_epoch_start(self):
        self._val_nll_sum = self._val_tokens = 0.0
        self._val_answers = torch.zeros(4, dtype=torch.float64)  # correct tokens, tokens, correct sequences, sequences

    def validation_step(self, batch, batch_idx):
        labels = batch["labels"]
        if (labels == IGNORE_INDEX).any():  # a synthetic task: score the answers, from the (small) logits
            logits = self(batch["input_ids"], batch.get("doc_starts"))
            nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            hits = answer_hits(logits, labels)
            self._val_answers += torch.tensor([hits[0], hits[1], hits[2], labels.shape[0]], dtype=torch.float64)
        else:
            nll = self(batch["input_ids"], batch.get("doc_starts"), labels, "sum")
        self._val_nll_sum += nll.detach()
        self._val_tokens += int((labels != IGNORE_INDEX).sum())

    def on_validation_epoch_end(self):
        totals = torch.tensor([float(self._val_nll_sum), float(self._val_tokens), *self._val_answers.tolist()],
                              dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[1] == 0:
            return
        loss = (totals[0] / totals[1]).item()
        self.last_validated_step = self.global_step
        # every rank holds the same global value: synchronized with max, which keeps it exact
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log("val/ppl", math.exp(min(loss, 50.0)), prog_bar=True, sync_dist=True, reduce_fx="max")
        if totals[3] > 0:  # answer accuracy: per answer token and per sequence (all its answers right)
            self.log("val/acc", (totals[2] / totals[3]).item(), prog_bar=True, sync_dist=True, reduce_fx="max")
            self.log("val/seq_acc", (totals[4] / totals[5]).item(), prog_bar=False, sync_dist=True, reduce_fx="max")

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
