"""The classic LSTM cell (DESIGN.md §7): sigmoid gates, tanh candidate, additive cell memory.

    (f̃, ĩ, õ, z̃) = W x_t + U h_{t-1} + b
    c_t = σ(f̃) c_{t-1} + σ(ĩ) tanh(z̃)
    h_t = σ(õ) tanh(c_t)

The baseline the xLSTM cells generalize: exponential input gates, normalizer and stabilizer are what
sLSTM adds; the matrix memory is what mLSTM adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lstm_pointwise(forget, input, output, candidate, c_prev):
    """The cell update from gate pre-activations (each (..., H)) -> (h, c)."""
    c = torch.sigmoid(forget) * c_prev + torch.sigmoid(input) * torch.tanh(candidate)
    return torch.sigmoid(output) * torch.tanh(c), c


class LSTMCell(nn.Module):
    """One LSTM step; gate rows of W, U and b are ordered forget, input, output, candidate."""

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
