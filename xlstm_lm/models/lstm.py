"""The classic LSTM (DESIGN.md §7): the cell, and a multi-layer LSTM language model baseline.

    (f̃, ĩ, õ, z̃) = W x_t + U h_{t-1} + b
    c_t = σ(f̃) c_{t-1} + σ(ĩ) tanh(z̃)
    h_t = σ(õ) tanh(c_t)

The baseline the xLSTM cells generalize: exponential input gates, normalizer and stabilizer are what
sLSTM adds; the matrix memory is what mLSTM adds. The language model runs the same math through
`torch.nn.LSTM` (fast fused kernels; a test checks it against `LSTMCell`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from xlstm_lm.models.base import LanguageModel


def lstm_pointwise(forget, input, output, candidate, c_prev):
    """The cell update from gate pre-activations (each (..., H)) -> (h, c)."""
    c = torch.sigmoid(forget) * c_prev + torch.sigmoid(input) * torch.tanh(candidate)
    return torch.sigmoid(output) * torch.tanh(c), c


class LSTMCell(nn.Module):
    """One LSTM step, the reference the baseline is checked against (the language model runs `nn.LSTM`);
    gate rows of W, U and b are ordered forget, input, output, candidate."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_weight = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.recurrent_weight = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.input_weight, -bound, bound)
        nn.init.uniform_(self.recurrent_weight, -bound, bound)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x (B, I), state (h, c) each (B, H) -> (h, c)."""
        h_prev, c_prev = state
        gates = x @ self.input_weight.T + h_prev @ self.recurrent_weight.T + self.bias  # (B, 4H)
        return lstm_pointwise(*gates.chunk(4, dim=-1), c_prev)


@dataclass
class LSTMConfig:
    """Architecture of the LSTM language model baseline."""

    architecture: str = "lstm"
    vocab_size: Optional[int] = None  # None until known: the training CLI sets the tokenizer's, rounded up to 64
    embedding_dim: int = 256  # also the hidden size
    num_blocks: int = 8  # the size preset's xLSTM block count; the LSTM has `num_layers` layers
    num_layers: Optional[int] = None  # None: round(0.75 num_blocks), parameter parity (8 D² vs 6 D² a layer)
    num_heads: int = 4  # unused (an LSTM has no heads); present so the size presets apply unchanged
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.architecture != "lstm":
            raise ValueError(f"LSTMConfig.architecture must be 'lstm', got {self.architecture!r}")
        if self.layers < 1:
            raise ValueError(f"the LSTM needs at least one layer (num_blocks={self.num_blocks})")

    @property
    def layers(self) -> int:
        return self.num_layers if self.num_layers is not None else max(1, round(0.75 * self.num_blocks))


class LSTMLM(LanguageModel):
    """Embedding, stacked LSTM layers, LM head; state = (h, c) each (layers, B, D).

    Note: `torch.nn.LSTM` cannot reset its memory inside a sequence, so `doc_starts` is not supported;
    in packed training windows this baseline carries memory across document boundaries.
    """

    supports_doc_starts = False
    state_batch_dim = 1  # torch.nn.LSTM's (layers, B, D)

    def __init__(self, config: LSTMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("LSTMConfig.vocab_size is not set: give the tokenizer's vocabulary size")
        self.config = config
        D = config.embedding_dim
        self.build_embedding_and_head(config.vocab_size, D, config.tie_embeddings)
        self.lstm = nn.LSTM(D, D, num_layers=config.layers, batch_first=True)
        self.init_weights()

    def init_weights(self) -> None:
        self.init_embedding_and_head()
        self.lstm.reset_parameters()

    def forward(self, input_ids: torch.Tensor, state=None, doc_starts=None, return_state: bool = False,
                labels=None, reduction: str = "mean"):
        """Next-token logits (B, S, V) in float32 (the loss given `labels`, see `output`), and the final (h, c)
        when `return_state`."""
        if doc_starts is not None:
            raise ValueError("the LSTM baseline cannot reset at document starts (supports_doc_starts is False)")
        y, new_state = self.lstm(self.embedding(input_ids), None if state is None else tuple(state))
        out = self.output(y, labels, reduction)
        return (out, new_state) if return_state else out
