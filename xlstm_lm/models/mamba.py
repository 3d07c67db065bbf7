"""Mamba baseline (Gu & Dao 2023, Mamba-1): residual blocks of a selective state-space mixer, no attention, no FFN.

    x = x + Mixer(RMSNorm(x))
    Mixer(n): [x̃, z] = W_in n;  u = SiLU(CausalConv(x̃));  [δ, B, C] = W_x u;  Δ = softplus(W_Δ δ + b_Δ)
              y = SelectiveScan(u, Δ, A = -exp(A_log), B, C) + D ⊙ u;  out = W_out(y ⊙ SiLU(z))

The recurrence is the selective scan of `xlstm_lm.kernels.selective_scan`. Sized by the same `size=` presets:
with expand 2, state size 16 and Δ rank D/16 a layer holds about 6.25 D², an xLSTM block about 6 D², so the
stack gets as many layers as the preset has blocks and lands within 10% of xLSTM[7:1]. The state of a layer
is (conv state (B, K-1, E), SSM state (B, E, N)): fixed size, carried across windows like the xLSTM cells'.

Notation: B batch, S sequence length, D width, E = expand · D inner channels, N state size, R Δ rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm.kernels.selective_scan import selective_scan
from xlstm_lm.models.base import LanguageModel
from xlstm_lm.models.components import CausalConv1d, rms_norm, small_init_, wang_init_


@dataclass
class MambaConfig:
    """Architecture of the Mamba baseline; the defaults are the Mamba paper's."""

    architecture: str = "mamba"
    vocab_size: Optional[int] = None  # None until known: the training CLI sets the tokenizer's, rounded up to 64
    embedding_dim: int = 256
    num_blocks: int = 8  # the size preset's xLSTM block count; Mamba has `num_layers` layers
    num_layers: Optional[int] = None  # None: num_blocks (parameter parity: about 6.25 D² a layer vs 6 D² a block)
    num_heads: int = 4  # unused (Mamba has no heads); present so the size presets apply unchanged
    expand: int = 2  # inner channels E = expand · D
    state_size: int = 16  # N, per inner channel
    conv_kernel: int = 4
    dt_rank: Optional[int] = None  # None: ceil(D / 16)
    dt_min: float = 1e-3  # Δ at init is log-uniform in [dt_min, dt_max] (floored at dt_init_floor)
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64  # time steps per recomputed chunk of the native scan's backward (memory only)
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.architecture != "mamba":
            raise ValueError(f"MambaConfig.architecture must be 'mamba', got {self.architecture!r}")
        for name in ("embedding_dim", "expand", "state_size", "conv_kernel", "chunk_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.layers < 1:
            raise ValueError(f"Mamba needs at least one layer (num_blocks={self.num_blocks})")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < model.dt_min <= model.dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def layers(self) -> int:
        return self.num_layers if self.num_layers is not None else self.num_blocks

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embedding_dim / 16)


class MambaMixer(nn.Module):
    """The selective SSM mixer of one Mamba layer; state = (conv state, SSM state)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        D, E, N, R = config.embedding_dim, config.expand * config.embedding_dim, config.state_size, config.rank
        self.config, self.inner, self.state_size, self.rank = config, E, N, R
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv = CausalConv1d(E, config.conv_kernel)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=False)

    def init_weights(self, num_layers: int) -> None:
        """The Mamba paper's SSM init: A = -(1..N) per channel, D = 1, Δ bias = softplus⁻¹ of a log-uniform Δ;
        the projections get the project's small and Wang inits (DESIGN §6)."""
        cfg, D = self.config, self.config.embedding_dim
        small_init_(self.in_proj.weight, D)
        small_init_(self.x_proj.weight, self.inner)
        wang_init_(self.out_proj.weight, D, num_layers)
        self.conv.reset_parameters()
        nn.init.uniform_(self.dt_proj.weight, -self.rank**-0.5, self.rank**-0.5)
        with torch.no_grad():
            log_dt = torch.empty(self.inner, device=self.D.device).uniform_(math.log(cfg.dt_min), math.log(cfg.dt_max))
            dt = log_dt.exp().clamp(min=cfg.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
            self.A_log.copy_(torch.arange(1, self.state_size + 1, dtype=torch.float32).log().expand(self.inner, -1))
        nn.init.ones_(self.D)

    def forward(self, x: torch.Tensor, state=None, doc_starts=None):
        """x (B, S, D) -> (y (B, S, D), (conv state (B, K-1, E), SSM state (B, E, N)))."""
        conv_state, ssm_state = (None, None) if state is None else state
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, S, E) each
        u, conv_state = self.conv(u, conv_state, doc_starts)
        u = F.silu(u)
        delta, B, C = self.x_proj(u).split([self.rank, self.state_size, self.state_size], dim=-1)
        dt = F.softplus(self.dt_proj(delta).float())  # (B, S, E)
        y, ssm_state = selective_scan(u, dt, -torch.exp(self.A_log.float()), B, C, ssm_state, doc_starts,
                                      self.config.chunk_size)
        y = (y + u * self.D.to(u.dtype)) * F.silu(z)
        return self.out_proj(y), (conv_state, ssm_state)


class MambaLayer(nn.Module):
    """Pre-norm residual layer: x + Mixer(RMSNorm(x))."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.norm = rms_norm(config.embedding_dim, eps=1e-5)
        self.mixer = MambaMixer(config)

    def init_weights(self, num_layers: int) -> None:
        nn.init.ones_(self.norm.weight)
        self.mixer.init_weights(num_layers)

    def forward(self, x, state=None, doc_starts=None):
        y, state = self.mixer(self.norm(x), state, doc_starts)
        return x + y, state


class MambaLM(LanguageModel):
    """Token ids in, next-token logits out; `state` is the list of per-layer (conv state, SSM state).

    `doc_starts` resets exactly: the SSM state before a document's first token is dropped and the convolution
    does not reach back across it, so packed documents give the outputs each gives alone.
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("MambaConfig.vocab_size is not set: give the tokenizer's vocabulary size")
        self.config = config
        self.build_embedding_and_head(config.vocab_size, config.embedding_dim, config.tie_embeddings)
        self.layers = nn.ModuleList(MambaLayer(config) for _ in range(config.layers))
        self.final_norm = rms_norm(config.embedding_dim, eps=1e-5)
        self.init_weights()

    def init_weights(self) -> None:
        self.init_embedding_and_head()
        for layer in self.layers:
            layer.init_weights(len(self.layers))
        nn.init.ones_(self.final_norm.weight)

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None,
                doc_starts: Optional[torch.Tensor] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None, reduction: str = "mean"):
        """Next-token logits (B, S, V) in float32 (the loss given `labels`, see `output`), and the per-layer
        states after the last token when `return_state`."""
        x, new_state = self.run_layers(self.layers, self.embedding(input_ids), state, doc_starts)
        out = self.output(self.final_norm(x), labels, reduction)
        return (out, new_state) if return_state else out
