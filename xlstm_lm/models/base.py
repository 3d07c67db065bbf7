"""What every language model of the project shares: the parameter count and the recurrence flag.

All models take `forward(input_ids, state=None, doc_starts=None, return_state=False, labels=None,
reduction="mean")` and return float32 logits, or with `labels` the next-token loss computed without the
logits (and the state after the last token when asked), so training, evaluation and generation treat
them alike. A recurrent model's state has a fixed size; the Transformer's is a KV cache that grows.
"""

from __future__ import annotations

import torch
from torch import nn

from xlstm_lm.models.components import small_init_, soft_cap
from xlstm_lm.models.head_loss import linear_cross_entropy


class LanguageModel(nn.Module):
    """Base class: subclasses define `embedding`, `head`, `config` (with `tie_embeddings`) and `forward`."""

    is_recurrent: bool = True  # constant-size state; False for the Transformer's growing KV cache
    supports_doc_starts: bool = True  # can reset (or mask) at document starts inside a window

    def build_embedding_and_head(self, vocab_size: int, dim: int, tie: bool) -> None:
        """The token embedding and the LM head (bias-free), sharing one matrix when `tie`."""
        self.embedding = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie:
            self.head.weight = self.embedding.weight

    def output(self, features: torch.Tensor, labels: torch.Tensor | None = None, reduction: str = "mean",
               logit_soft_cap: float | None = None) -> torch.Tensor:
        """The head on the final features (B, S, D): float32 logits (B, S, V), or, given labels (B, S), their
        cross-entropy ("mean" or "sum" over tokens) computed block by block without holding the logits."""
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
