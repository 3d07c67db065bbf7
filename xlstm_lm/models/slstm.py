"""The paper's sLSTM layer and block (DESIGN.md §5 and §6).

Block: x + Layer(LayerNorm(x)), then x + GatedGELU-FFN(LayerNorm(x)). Layer: a causal conv + SiLU of
the normed input feeds the input and forget gates, the normed input itself feeds z and o; each gate's
input side is a head-wise (block-diagonal) projection; the sLSTM cell adds the recurrent R y_{t-1};
a per-head norm closes it. Recurrent matrices start at zero; forget biases follow a power law over the
head units whose exponent grows with depth.

Notation: B batch, S length, D width, NH heads, DH = D / NH; gates in the order i, f, z, o.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm.kernels import BackendChoice, slstm, slstm_backend, slstm_step
from xlstm_lm.models.components import (
    BlockDiagonalLinear,
    CausalConv1d,
    GatedFeedForward,
    MultiHeadNorm,
    layer_norm,
    round_up,
    small_init_,
)


def powerlaw_forget_bias(head_dim: int, block_index: int, num_blocks: int) -> torch.Tensor:
    """b_f[j] = 5 - 12 (j / (DH-1))^(0.3 + 1.3 l / (N-1)): long memories in some units, short in others."""
    depth = block_index / (num_blocks - 1) if num_blocks > 1 else 0.0
    position = torch.arange(head_dim, dtype=torch.float64) / max(head_dim - 1, 1)
    return (5.0 - 12.0 * position ** (0.3 + 1.3 * depth)).float()


class SLSTMLayer(nn.Module):
    """The recurrent part of the sLSTM block; state = (y, c, n, m, conv state)."""

    def __init__(self, dim: int, num_heads: int, conv_kernel: int = 4, backend: str | BackendChoice = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"sLSTM: width {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.backend = slstm_backend(backend)
        self.conv = CausalConv1d(dim, conv_kernel)
        self.gate_inputs = nn.ModuleList(BlockDiagonalLinear(dim, dim, num_heads) for _ in range(4))
        self.recurrent = nn.Parameter(torch.zeros(4, num_heads, self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4, num_heads, self.head_dim))
        self.norm = MultiHeadNorm(num_heads, self.head_dim)

    def init_weights(self, block_index: int, num_blocks: int) -> None:
        for proj in self.gate_inputs:
            small_init_(proj.weight, self.dim)
        self.conv.reset_parameters()
        nn.init.zeros_(self.recurrent)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[1] = powerlaw_forget_bias(self.head_dim, block_index, num_blocks)
        nn.init.ones_(self.norm.weight)

    def forward(self, x: torch.Tensor, state=None, doc_starts=None, return_state: bool = False, step: bool = False):
        """x (B, S, D) -> (y (B, S, D), new state or None); `step`: S = 1 through the cell's step function."""
        B, S, _ = x.shape
        cell_state, conv_state = (None, None) if state is None else (state[:4], state[4])
        conv, new_conv_state = self.conv(x, conv_state, doc_starts)
        conv = F.silu(conv)
        sources = (conv, conv, x, x)  # i and f see the conv output, z and o the input
        gates_x = torch.stack(
            [proj(src).view(B, S, self.num_heads, self.head_dim) for proj, src in zip(self.gate_inputs, sources)],
            dim=2,
        )  # (B, S, 4, NH, DH)
        if step:  # one token continuing the state (generation)
            y, new_cell_state = slstm_step(gates_x[:, 0], self.recurrent, self.bias, cell_state, backend=self.backend)
            y = y[:, None]
        else:
            out = slstm(gates_x, self.recurrent, self.bias, cell_state, doc_starts=doc_starts, backend=self.backend,
                        return_state=return_state)
            y, new_cell_state = out if return_state else (out, None)
        y = self.norm(y)  # (B, S, D)
        return y, (*new_cell_state, new_conv_state) if return_state else None


class SLSTMBlock(nn.Module):
    """Pre-LayerNorm residual sLSTM layer followed by a pre-LayerNorm gated-GELU FFN (1.3 D, to 64)."""

    def __init__(self, dim: int, num_heads: int, ffn_factor: float = 1.3, **layer_kwargs):
        super().__init__()
        self.norm = layer_norm(dim)
        self.layer = SLSTMLayer(dim, num_heads, **layer_kwargs)
        self.ffn_norm = layer_norm(dim)
        self.ffn = GatedFeedForward(dim, round_up(ffn_factor * dim, 64), "gelu")

    def init_weights(self, block_index: int, num_blocks: int) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.ones_(self.ffn_norm.weight)
        self.layer.init_weights(block_index, num_blocks)
        self.ffn.init_weights(self.layer.dim, num_blocks)

    def forward(self, x, state=None, doc_starts=None, return_state: bool = False, step: bool = False):
        y, new_state = self.layer(self.norm(x), state, doc_starts, return_state, step)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), new_state
