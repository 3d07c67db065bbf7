"""The 7B-style xLSTM language model (NX-AI's xLSTM-7B architecture): its config, block and stack (DESIGN.md §4, §6).

Embedding, mLSTM-only blocks, RMSNorm, LM head with logits soft-capped at 30. Each block:

x + W_out(σ(o) ⊙ PerHeadNorm(mLSTM(q, k, v, i, f))) with q, k (0.5 D), v, o (D) and the gates all
linear in RMSNorm(x); gates soft-capped at 15 tanh(·/15); then x + SwiGLU(RMSNorm(x)) of width
2.667 D rounded up to 64. Input-gate bias -10, forget-gate bias linspace(3, 6) over heads and zero gate
weights at init, so every head starts as a long, quiet memory.

Notation: B batch, S length, D width, NH heads, DQK = 0.5 D / NH, DV = D / NH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from xlstm_lm.kernels import MLSTM_BACKENDS, BackendChoice, mlstm_backend
from xlstm_lm.models.base import BlockStackConfig, BlockStackLM
from xlstm_lm.models.components import (
    GatedFeedForward,
    MultiHeadNorm,
    input_and_forget_gates,
    rms_norm,
    round_up,
    small_init_,
    soft_cap,
    split_heads,
    wang_init_,
)
from xlstm_lm.models.mlstm import run_mlstm


@dataclass
class XLSTMLargeConfig(BlockStackConfig):
    """Architecture of the 7B-style xLSTM language model."""

    architecture: str = "xlstm_large"
    qk_factor: float = 0.5  # q and k width = qk_factor * D
    ffn_factor: float = 2.667  # SwiGLU width = ffn_factor * D, rounded up to a multiple of ffn_multiple_of
    ffn_multiple_of: int = 64
    gate_soft_cap: float = 15.0  # input and forget gates: cap * tanh(x / cap)
    logit_soft_cap: Optional[float] = 30.0
    norm_eps: float = 1e-6  # the RMSNorms and the per-head norm
    head_norm_eps: Optional[float] = None  # the per-head norm's own; None follows norm_eps (NX-AI's choice)
    cell_eps: float = 1e-6  # added to the mLSTM normalizer

    def __post_init__(self):
        if self.architecture != "xlstm_large":
            raise ValueError(f"XLSTMLargeConfig.architecture must be 'xlstm_large', got {self.architecture!r}")
        super().__post_init__()

    def cell_backends(self) -> list:
        return [MLSTM_BACKENDS]


class LargeMLSTMBlock(nn.Module):
    """One block of the 7B-style stack; state = (C, n, m)."""

    def __init__(self, config: XLSTMLargeConfig, backend: str | BackendChoice = "auto"):
        super().__init__()
        dim, num_heads = config.embedding_dim, config.num_heads
        qk_dim = int(config.qk_factor * dim)
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"large mLSTM: widths {qk_dim} (q, k) and {dim} (v) must be divisible by num_heads {num_heads}"
            )
        self.dim, self.num_heads, self.gate_soft_cap = dim, num_heads, config.gate_soft_cap
        self.chunk_size, self.cell_eps, self.backend = config.chunk_size, config.cell_eps, mlstm_backend(backend)
        head_norm_eps = config.norm_eps if config.head_norm_eps is None else config.head_norm_eps
        self.norm = rms_norm(dim, config.norm_eps)
        self.q = nn.Linear(dim, qk_dim, bias=False)
        self.k = nn.Linear(dim, qk_dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.igate = nn.Linear(dim, num_heads)
        self.fgate = nn.Linear(dim, num_heads)
        self.head_norm = MultiHeadNorm(num_heads, dim // num_heads, head_norm_eps)
        self.out = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = rms_norm(dim, config.norm_eps)
        self.ffn = GatedFeedForward(dim, round_up(config.ffn_factor * dim, config.ffn_multiple_of), "silu")

    def init_weights(self, block_index: int, num_blocks: int) -> None:
        for proj in (self.q, self.k, self.v, self.o):
            small_init_(proj.weight, self.dim)
        nn.init.zeros_(self.igate.weight)
        nn.init.constant_(self.igate.bias, -10.0)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        for norm in (self.norm, self.head_norm, self.ffn_norm):
            nn.init.ones_(norm.weight)
        wang_init_(self.out.weight, self.dim, num_blocks)
        self.ffn.init_weights(self.dim, num_blocks)

    def forward(self, x: torch.Tensor, state=None, doc_starts=None, return_state: bool = False, step: bool = False):
        """x (B, S, D) -> (x' (B, S, D), new state or None); `step`: S = 1 through the cell's step kernel."""
        xn = self.norm(x)
        i, f = (soft_cap(gate, self.gate_soft_cap) for gate in input_and_forget_gates(xn, self.igate, self.fgate))
        i, f = i.transpose(1, 2), f.transpose(1, 2)  # (B, NH, S)
        q, k, v = (split_heads(proj(xn), self.num_heads) for proj in (self.q, self.k, self.v))
        h, new_state = run_mlstm(q, k, v, i, f, state, doc_starts, self.backend, self.chunk_size, return_state, step,
                                 self.cell_eps)
        h = self.head_norm(h.transpose(1, 2))  # (B, S, D)
        x = x + self.out(torch.sigmoid(self.o(xn)) * h)
        return x + self.ffn(self.ffn_norm(x)), new_state


class XLSTMLargeLM(BlockStackLM):
    """The 7B-style stack of large mLSTM blocks, with the recurrent state of every block carried."""

    def __init__(self, config: XLSTMLargeConfig):
        kernels = mlstm_backend(config.backend)
        blocks = [LargeMLSTMBlock(config, kernels) for _ in range(config.num_blocks)]
        super().__init__(config, blocks, rms_norm(config.embedding_dim, config.norm_eps), [kernels])
