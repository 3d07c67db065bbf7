"""What every language model of the project shares: the parameter count and the recurrence flag, and the
forward of the two xLSTM stacks (embedding, blocks carrying states, final norm, head).

All models take `forward(input_ids, state=None, doc_starts=None, return_state=False, labels=None,
reduction="mean")` and return float32 logits, or with `labels` the next-token loss computed without the
logits (and the state after the last token when asked), so training, evaluation and generation treat
them alike. A recurrent model's state has a fixed size; the Transformer's is a KV cache that grows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from xlstm_lm.kernels import BackendChoice
from xlstm_lm.models.components import small_init_, soft_cap
from xlstm_lm.models.head_loss import linear_cross_entropy

log = logging.getLogger(__name__)


class LanguageModel(nn.Module):
    """Base class: subclasses define `embedding`, `head`, `config` (with `tie_embeddings`) and `forward`."""

    is_recurrent: bool = True  # constant-size state; False for the Transformer's growing KV cache
    supports_doc_starts: bool = True  # can reset (or mask) at document starts inside a window
    state_batch_dim: int = 0  # the batch dimension of every state tensor (rows of a batch are stacked along it)

    def decode_step(self, input_ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One new token per row, (B, 1), continuing `state`: (logits (B, 1, V), new state). What generation runs
        after the prompt; the xLSTM stacks take their cells' step functions here."""
        return self(input_ids, state=state, return_state=True)

    def run_layers(self, layers: nn.ModuleList, x: torch.Tensor, state: Optional[list],
                   doc_starts: Optional[torch.Tensor]) -> tuple[torch.Tensor, list]:
        """x (B, S, D) through `layers`, each `layer(x, its state or None, doc_starts) -> (x, new state)`: the
        output and the list of new states (a Transformer's KV caches, Mamba's conv and SSM states)."""
        if state is not None and len(state) != len(layers):
            raise ValueError(f"state has {len(state)} entries, the model has {len(layers)} layers")
        new_state = []
        for index, layer in enumerate(layers):
            x, layer_state = layer(x, None if state is None else state[index], doc_starts)
            new_state.append(layer_state)
        return x, new_state

    def build_embedding_and_head(self, vocab_size: int, dim: int, tie: bool) -> None:
        """The token embedding and the LM head (bias-free), sharing one matrix when `tie`."""
        self.embedding = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie:
            self.head.weight = self.embedding.weight

    def output(self, features: torch.Tensor, labels: torch.Tensor | None = None, reduction: str = "mean",
               logit_soft_cap: float | None = None) -> torch.Tensor:
        """The head on the final features (B, S, D): float32 logits (B, S, V), or, given labels (B, S), their
        cross-entropy ("mean" or "sum" over tokens) computed block by block without holding the logits; labels at
        `IGNORE_INDEX` are not scored (the synthetic tasks score their answers only)."""
        if labels is not None:
            return linear_cross_entropy(features.flatten(0, 1), self.head.weight, labels.flatten(),
                                        soft_cap=logit_soft_cap, reduction=reduction)
        logits = self.head(features).float()
        return soft_cap(logits, logit_soft_cap) if logit_soft_cap else logits

    def init_embedding_and_head(self) -> None:
        """Small init (DESIGN §6) for the embedding and, when untied, the head."""
        small_init_(self.embedding.weight, self.config.embedding_dim)
        if not self.config.tie_embeddings:
            small_init_(self.head.weight, self.config.embedding_dim)

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Parameter count; `exclude_embedding` leaves out the input embedding table (not the head)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embedding and not getattr(self.config, "tie_embeddings", False):
            total -= self.embedding.weight.numel()
        return total


@dataclass
class BlockStackConfig:
    """The settings both xLSTM stacks share; each stack's config sets its `architecture` and adds block settings."""

    architecture: str = ""
    vocab_size: Optional[int] = None  # None until known: the training CLI sets the tokenizer's, rounded up to 64
    embedding_dim: int = 256
    num_blocks: int = 8
    num_heads: int = 4
    logit_soft_cap: Optional[float] = None
    tie_embeddings: bool = False
    chunk_size: int = 64
    backend: str = "auto"  # cell kernels: auto (triton on CUDA, native elsewhere), native, triton, ...

    def __post_init__(self):
        for name in ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "chunk_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} does not divide model.embedding_dim={self.embedding_dim}; "
                "choose a head count that divides the width"
            )
        valid = sorted({"auto"} | set.intersection(*(set(cell) for cell in self.cell_backends())))
        if self.backend not in valid:
            raise ValueError(f"model.backend={self.backend!r} is not one of {valid} (for this block mix)")

    def cell_backends(self) -> list:
        """The backend registry of every cell type the stack uses (a backend must exist in each)."""
        raise NotImplementedError


class BlockStackLM(LanguageModel):
    """Token ids in, next-token logits out, through residual `blocks` that each carry a recurrent state.

    Subclasses build the blocks and the final norm for their config (which has `logit_soft_cap`).
    """

    def __init__(self, config, blocks: list[nn.Module], final_norm: nn.Module, kernels: list[BackendChoice]):
        """`kernels`: the cells' backends, resolved once for the whole stack (logged)."""
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(f"{type(config).__name__}.vocab_size is not set: give the tokenizer's vocabulary size")
        self.config = config
        # the blocks are built before the embedding and head: the random stream of a seed stays that of earlier
        # versions (blocks draw their default init before init_weights)
        self.build_embedding_and_head(config.vocab_size, config.embedding_dim, config.tie_embeddings)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.init_weights()
        for choice in kernels:
            log.info("%s", choice.describe())

    def init_weights(self) -> None:
        """Small init for embedding and head, each block's own init (DESIGN §6)."""
        self.init_embedding_and_head()
        for index, block in enumerate(self.blocks):
            block.init_weights(index, self.config.num_blocks)
        nn.init.ones_(self.final_norm.weight)

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None,
                doc_starts: Optional[torch.Tensor] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None, reduction: str = "mean", step: bool = False):
        """Next-token logits, or the next-token loss given the labels.

        Args:
            input_ids: (B, S) token ids.
            state: per-block recurrent states from a previous call (None = fresh memory).
            doc_starts: (B, S) bool, True at the first token of a document: memories reset there.
            return_state: also return the per-block states after the last token.
            labels: (B, S) next-token ids: return their cross-entropy instead of the logits (`output`).
            reduction: "mean" or "sum" of the loss over tokens.
            step: one token per row (S = 1) continuing `state`, through the cells' step functions (`decode_step`).

        Returns:
            logits (B, S, V) in float32 (or the loss), and the list of block states when `return_state`.
        """
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} blocks")
        x = self.embedding(input_ids)  # (B, S, D)
        new_state = []
        for index, block in enumerate(self.blocks):
            x, block_state = block(x, None if state is None else state[index], doc_starts, return_state, step)
            new_state.append(block_state)
        out = self.output(self.final_norm(x), labels, reduction, self.config.logit_soft_cap)
        return (out, new_state) if return_state else out

    def decode_step(self, input_ids: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        return self(input_ids, state=state, return_state=True, step=True)
