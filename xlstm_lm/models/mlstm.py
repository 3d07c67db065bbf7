"""The paper's mLSTM layer and block (DESIGN.md §4 and §6).

Block: x + Layer(LayerNorm(x)). Layer: up-project D -> 2 * inner and split into x_m and z; a causal
depthwise conv (kernel 4) + SiLU of x_m feeds q and k (block-diagonal, blocks of 4); v comes from x_m;
the input and forget gates are linear in concat(q, k, v); the mLSTM cell mixes over time; a per-head
norm, a learnable skip of the conv output, the output gate SiLU(z) and a down-projection close it.
No separate FFN.

Notation: B batch, S length, D width, NH heads, DH = inner / NH.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm.kernels import BackendChoice, mlstm, mlstm_backend, mlstm_step
from xlstm_lm.models.components import (
    BlockDiagonalLinear,
    CausalConv1d,
    MultiHeadNorm,
    input_and_forget_gates,
    layer_norm,
    small_init_,
    split_heads,
    wang_init_,
)

def run_mlstm(q, k, v, i, f, state, doc_starts, backend: BackendChoice, chunk_size: int, return_state: bool,
              step: bool, eps: float = 1e-6):
    """The mLSTM cell over (B, NH, S, ·) inputs: h and the new state (None unless `return_state`), through the
    backend's step function when `step` (one token continuing `state`: generation, no document starts).
    doc_starts (B, S) bool or None: a fresh cell state at each document start (`xlstm_lm.kernels.mlstm`)."""
    if step:
        h, new_state = mlstm_step(*(x[:, :, 0] for x in (q, k, v, i, f)), state, backend=backend, eps=eps)
        return h[:, :, None], new_state
    out = mlstm(q, k, v, i, f, state, doc_starts=doc_starts, backend=backend, chunk_size=chunk_size,
                return_state=return_state, eps=eps)
    return out if return_state else (out, None)


class MLSTMLayer(nn.Module):
    """The mixing part of the paper mLSTM block; state = (C, n, m, conv state)."""

    def __init__(self, dim: int, inner_dim: int, num_heads: int, conv_kernel: int = 4,
                 qkv_block_size: int = 4, chunk_size: int = 64, backend: str | BackendChoice = "auto"):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"mLSTM: inner width {inner_dim} is not divisible by num_heads {num_heads}")
        if inner_dim % qkv_block_size:
            raise ValueError(f"mLSTM: inner width {inner_dim} is not divisible by the qkv block size {qkv_block_size}")
        self.dim, self.inner_dim, self.num_heads = dim, inner_dim, num_heads
        self.chunk_size, self.backend = chunk_size, mlstm_backend(backend)
        num_qkv_blocks = inner_dim // qkv_block_size
        self.up = nn.Linear(dim, 2 * inner_dim, bias=False)
        self.conv = CausalConv1d(inner_dim, conv_kernel)
        self.q = BlockDiagonalLinear(inner_dim, inner_dim, num_qkv_blocks)
        self.k = BlockDiagonalLinear(inner_dim, inner_dim, num_qkv_blocks)
        self.v = BlockDiagonalLinear(inner_dim, inner_dim, num_qkv_blocks)
        self.igate = nn.Linear(3 * inner_dim, num_heads)
        self.fgate = nn.Linear(3 * inner_dim, num_heads)
        self.norm = MultiHeadNorm(num_heads, inner_dim // num_heads)
        self.skip = nn.Parameter(torch.ones(inner_dim))
        self.down = nn.Linear(inner_dim, dim, bias=False)

    def init_weights(self, num_blocks: int) -> None:
        small_init_(self.up.weight, self.dim)
        for proj in (self.q, self.k, self.v):
            small_init_(proj.weight, self.dim)
        self.conv.reset_parameters()
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        nn.init.ones_(self.norm.weight)
        nn.init.ones_(self.skip)
        wang_init_(self.down.weight, self.dim, num_blocks)

    def forward(self, x: torch.Tensor, state=None, doc_starts=None, return_state: bool = False, step: bool = False):
        """x (B, S, D) -> (y (B, S, D), new state or None); `step`: S = 1 through the cell's step kernel."""
        cell_state, conv_state = (None, None) if state is None else (state[:3], state[3])
        x_m, z = self.up(x).chunk(2, dim=-1)  # (B, S, inner) each
        conv, new_conv_state = self.conv(x_m, conv_state, doc_starts)
        conv = F.silu(conv)
        q, k, v = self.q(conv), self.k(conv), self.v(x_m)  # (B, S, inner)
        i, f = input_and_forget_gates(torch.cat([q, k, v], dim=-1), self.igate, self.fgate)
        i, f = i.transpose(1, 2), f.transpose(1, 2)  # (B, NH, S)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))  # (B, NH, S, DH)
        h, new_cell_state = run_mlstm(q, k, v, i, f, cell_state, doc_starts, self.backend, self.chunk_size,
                                      return_state, step)
        h = self.norm(h.transpose(1, 2)) + self.skip * conv  # (B, S, inner)
        y = self.down(h * F.silu(z))
        return y, (*new_cell_state, new_conv_state) if return_state else None


class MLSTMBlock(nn.Module):
    """Pre-LayerNorm residual block around MLSTMLayer (the paper's mLSTM block)."""

    def __init__(self, dim: int, inner_dim: int, num_heads: int, **layer_kwargs):
        super().__init__()
        self.norm = layer_norm(dim)
        self.layer = MLSTMLayer(dim, inner_dim, num_heads, **layer_kwargs)

    def init_weights(self, block_index: int, num_blocks: int) -> None:
        nn.init.ones_(self.norm.weight)
        self.layer.init_weights(num_blocks)

    def forward(self, x, state=None, doc_starts=None, return_state: bool = False, step: bool = False):
        y, new_state = self.layer(self.norm(x), state, doc_starts, return_state, step)
        return x + y, new_state
