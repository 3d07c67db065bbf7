"""Llama-style decoder Transformer baseline: RMSNorm, rotary positions, SwiGLU, no biases.

    x = x + W_o Attention(RoPE(W_q n), RoPE(W_k n), W_v n),  n = RMSNorm(x)
    x = x + SwiGLU(RMSNorm(x))

Sized by the same `size=` presets as the xLSTM models: a Transformer layer holds about 12 D² parameters
and an xLSTM block about 6 D², so the Transformer gets num_blocks / 2 layers and lands within 10% of the
xLSTM parameter count. The recurrent `state` of the other models is a KV cache here: it grows with the
context, which is exactly the cost the xLSTM models avoid.

Notation: B batch, S new tokens, T cached tokens, D width, NH heads, DH = D / NH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm.models.base import LanguageModel
from xlstm_lm.models.components import GatedFeedForward, rms_norm, round_up, small_init_, split_heads, wang_init_


@dataclass
class LlamaConfig:
    """Architecture of the Transformer baseline."""

    architecture: str = "llama"
    vocab_size: Optional[int] = None  # None until known: the training CLI sets the tokenizer's, rounded up to 64
    embedding_dim: int = 256
    num_blocks: int = 8  # the size preset's xLSTM block count; the Transformer has `num_layers` layers
    num_layers: Optional[int] = None  # None: num_blocks // 2 (parameter parity with the xLSTM stack)
    num_heads: int = 4
    ffn_factor: float = 2.667
    rope_base: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.architecture != "llama":
            raise ValueError(f"LlamaConfig.architecture must be 'llama', got {self.architecture!r}")
        if self.embedding_dim % self.num_heads or (self.embedding_dim // self.num_heads) % 2:
            raise ValueError(
                f"model.num_heads={self.num_heads} must divide model.embedding_dim={self.embedding_dim} "
                "into an even head dimension (rotary embeddings rotate pairs)"
            )
        if self.layers < 1:
            raise ValueError(f"the Transformer needs at least one layer (num_blocks={self.num_blocks})")

    @property
    def layers(self) -> int:
        return self.num_layers if self.num_layers is not None else self.num_blocks // 2


def rotary(x: torch.Tensor, offset: int | torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (x_j, x_{j + DH/2}) by angle pos · base^(-2j/DH); x (B, NH, S, DH), positions from offset
    (an int), or each token's own position given as a (B, S) tensor."""
    S, DH = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, DH, 2, device=x.device, dtype=torch.float32) / DH)  # (DH/2,)
    if isinstance(offset, int):
        positions = torch.arange(offset, offset + S, device=x.device)  # (S,)
    else:
        positions = offset[:, None]  # (B, 1, S), the same for every head
    angles = positions.float()[..., None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (S, DH/2) or (B, 1, S, DH/2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope_base: float):
        super().__init__()
        self.num_heads, self.rope_base = num_heads, rope_base
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache=None, doc_starts=None):
        """x (B, S, D), cache (k, v) each (B, NH, T, DH) or None -> (y (B, S, D), new cache)."""
        cached = 0 if cache is None else cache[0].shape[2]
        S = x.shape[1]
        positions = cached
        if doc_starts is not None:  # positions restart at each document start, exactly as if it ran alone (RoPE
            # is relative, but its float32 angles round differently at other positions)
            steps = torch.arange(S, device=x.device)
            positions = steps - torch.where(doc_starts, steps, 0).cummax(dim=1).values  # (B, S)
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q, self.k, self.v))
        q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        if doc_starts is not None:  # attend within the document only
            doc = doc_starts.long().cumsum(dim=1)  # (B, S)
            mask = (doc[:, :, None] == doc[:, None, :]) & torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        elif cached and S > 1:  # new queries see the whole cache and the causal part of the new tokens
            mask = torch.ones(S, cached + S, dtype=torch.bool, device=x.device).tril(diagonal=cached)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=not cached)
        return self.out(y.transpose(1, 2).flatten(2)), (k, v)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_factor: float, rope_base: float):
        super().__init__()
        self.attention_norm = rms_norm(dim)
        self.attention = Attention(dim, num_heads, rope_base)
        self.ffn_norm = rms_norm(dim)
        self.ffn = GatedFeedForward(dim, round_up(ffn_factor * dim, 64), "silu")

    def init_weights(self, dim: int, num_layers: int) -> None:
        for proj in (self.attention.q, self.attention.k, self.attention.v):
            small_init_(proj.weight, dim)
        wang_init_(self.attention.out.weight, dim, num_layers)
        self.ffn.init_weights(dim, num_layers)
        nn.init.ones_(self.attention_norm.weight)
        nn.init.ones_(self.ffn_norm.weight)

    def forward(self, x, cache=None, doc_starts=None):
        y, cache = self.attention(self.attention_norm(x), cache, doc_starts)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), cache


class LlamaLM(LanguageModel):
    """Token ids in, next-token logits out; `state` is the per-layer KV cache."""

    is_recurrent = False

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("LlamaConfig.vocab_size is not set: give the tokenizer's vocabulary size")
        self.config = config
        D = config.embedding_dim
        self.build_embedding_and_head(config.vocab_size, D, config.tie_embeddings)
        self.layers = nn.ModuleList(
            TransformerLayer(D, config.num_heads, config.ffn_factor, config.rope_base) for _ in range(config.layers)
        )
        self.final_norm = rms_norm(D)
        self.init_weights()

    def init_weights(self) -> None:
        D = self.config.embedding_dim
        self.init_embedding_and_head()
        for layer in self.layers:
            layer.init_weights(D, len(self.layers))
        nn.init.ones_(self.final_norm.weight)

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None,
                doc_starts: Optional[torch.Tensor] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None, reduction: str = "mean"):
        """Next-token logits (B, S, V) in float32 (the loss given `labels`, see `output`), and the KV caches
        when `return_state`.

        `doc_starts` (B, S) restricts attention to the current document; it needs an empty cache.
        """
        if state is not None and doc_starts is not None:
            raise ValueError("doc_starts needs a fresh state: document masks do not extend into a KV cache")
        x, caches = self.run_layers(self.layers, self.embedding(input_ids), state, doc_starts)
        out = self.output(self.final_norm(x), labels, reduction)
        return (out, caches) if return_state else out
