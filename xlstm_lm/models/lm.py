"""The xLSTM language model: embedding, a stack of mLSTM/sLSTM blocks, final norm, LM head (DESIGN.md §6).

xLSTM[a:b] mixes a mLSTM blocks for every b sLSTM blocks; the sLSTM positions are explicit
(`slstm_at`) or derived: the paper's published positions for xLSTM[7:1] at 24 and 48 blocks, otherwise
the rule of `place_slstm_blocks`. The forward takes and returns the recurrent state of every block, so
a long sequence can be processed in pieces and text generated one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from xlstm_lm.kernels import MLSTM_BACKENDS, SLSTM_BACKENDS
from xlstm_lm.models.base import LanguageModel
from xlstm_lm.models.components import layer_norm, rms_norm, round_up
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.models.mlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMBlock

ARCHITECTURES = ("xlstm", "xlstm_large")

# Positions the xLSTM paper used for its xLSTM[7:1] language models, keyed by number of blocks.
PAPER_SLSTM_AT_7_1 = {24: [3, 20], 48: [3, 5, 7, 40, 42, 44]}


@dataclass
class XLSTMConfig:
    """Architecture of an xLSTM language model."""

    architecture: str = "xlstm"  # "xlstm": paper mLSTM/sLSTM blocks; "xlstm_large": the 7B-style mLSTM block
    ratio: str = "7:1"  # xLSTM[a:b]: a mLSTM blocks per b sLSTM blocks (paper architecture only)
    slstm_at: Optional[list[int]] = None  # explicit sLSTM block positions; None derives them from `ratio`
    vocab_size: Optional[int] = None  # None until known: the training CLI sets the tokenizer's, rounded up to 64
    embedding_dim: int = 256
    num_blocks: int = 8
    num_heads: int = 4
    proj_factor: float = 2.0  # paper mLSTM: inner width = proj_factor * D (rounded up to 64)
    conv_kernel: int = 4
    qkv_block_size: int = 4
    slstm_ffn_factor: float = 1.3
    large_qk_factor: float = 0.5
    large_ffn_factor: float = 2.667
    gate_soft_cap: float = 15.0
    logit_soft_cap: Optional[float] = None  # 30 for the 7B-style model
    tie_embeddings: bool = False
    chunk_size: int = 64
    backend: str = "auto"  # cell kernels: auto (triton on CUDA, native elsewhere), native, triton, ...

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        self.mlstm_slstm_ratio  # validates the ratio string
        for name in ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "chunk_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.slstm_at is not None:
            bad = [p for p in self.slstm_at if not 0 <= p < self.num_blocks]
            if bad or len(set(self.slstm_at)) != len(self.slstm_at):
                raise ValueError(
                    f"model.slstm_at={list(self.slstm_at)} must hold distinct block indices in [0, {self.num_blocks})"
                )
            if self.architecture == "xlstm_large" and self.slstm_at:
                raise ValueError("model.slstm_at must be empty for architecture xlstm_large (mLSTM blocks only)")
        cells = [MLSTM_BACKENDS] + ([SLSTM_BACKENDS] if self.slstm_positions else [])
        valid = sorted({"auto"} | set.intersection(*(set(cell) for cell in cells)))
        if self.backend not in valid:
            raise ValueError(f"model.backend={self.backend!r} is not one of {valid} (for this block mix)")
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} does not divide model.embedding_dim={self.embedding_dim}; "
                "choose a head count that divides the width"
            )

    @property
    def mlstm_slstm_ratio(self) -> tuple[int, int]:
        try:
            a, b = (int(part) for part in str(self.ratio).split(":"))
        except ValueError:
            raise ValueError(f"model.ratio must look like '7:1', got {self.ratio!r}") from None
        if a < 0 or b < 0 or a + b == 0:
            raise ValueError(f"model.ratio {self.ratio!r} needs non-negative parts, not both zero")
        return a, b

    @property
    def slstm_positions(self) -> list[int]:
        if self.architecture == "xlstm_large":
            return []
        if self.slstm_at is not None:
            return sorted(self.slstm_at)
        a, b = self.mlstm_slstm_ratio
        if (a, b) == (7, 1) and self.num_blocks in PAPER_SLSTM_AT_7_1:
            return PAPER_SLSTM_AT_7_1[self.num_blocks]
        return place_slstm_blocks(self.num_blocks, a, b)

    @property
    def inner_dim(self) -> int:
        return round_up(self.proj_factor * self.embedding_dim, 64)


def place_slstm_blocks(num_blocks: int, mlstm_parts: int, slstm_parts: int) -> list[int]:
    """Spread round(N b / (a + b)) sLSTM blocks evenly: block floor((j + 1/2) N / n) for j < n.

    At least one sLSTM block when b > 0, at least one mLSTM block when a > 0.
    """
    if slstm_parts == 0:
        return []
    count = round(num_blocks * slstm_parts / (mlstm_parts + slstm_parts))
    count = max(1, min(count, num_blocks - (1 if mlstm_parts > 0 else 0)))
    return [int((j + 0.5) * num_blocks / count) for j in range(count)]


class XLSTMLM(LanguageModel):
    """Token ids in, next-token logits out, with the recurrent state of every block carried."""

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("XLSTMConfig.vocab_size is not set: give the tokenizer's vocabulary size")
        self.config = config
        D, NH, N = config.embedding_dim, config.num_heads, config.num_blocks
        kernel_args = dict(chunk_size=config.chunk_size, backend=config.backend)
        slstm_at = set(config.slstm_positions)
        blocks = []
        for index in range(N):
            if config.architecture == "xlstm_large":
                block = LargeMLSTMBlock(D, NH, config.large_qk_factor, config.large_ffn_factor,
                                        config.gate_soft_cap, **kernel_args)
            elif index in slstm_at:
                block = SLSTMBlock(D, NH, config.slstm_ffn_factor, conv_kernel=config.conv_kernel,
                                   backend=config.backend)
            else:
                block = MLSTMBlock(D, config.inner_dim, NH, conv_kernel=config.conv_kernel,
                                   qkv_block_size=config.qkv_block_size, **kernel_args)
            blocks.append(block)
        self.build_embedding_and_head(config.vocab_size, D, config.tie_embeddings)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = rms_norm(D) if config.architecture == "xlstm_large" else layer_norm(D)
        self.init_weights()

    def init_weights(self) -> None:
        """Small init for embedding and head, each block's own init (DESIGN §6)."""
        self.init_embedding_and_head()
        for index, block in enumerate(self.blocks):
            block.init_weights(index, self.config.num_blocks)
        nn.init.ones_(self.final_norm.weight)

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None,
                doc_starts: Optional[torch.Tensor] = None, return_state: bool = False,
                labels: Optional[torch.Tensor] = None, reduction: str = "mean"):
        """Next-token logits, or the next-token loss given the labels.

        Args:
            input_ids: (B, S) token ids.
            state: per-block recurrent states from a previous call (None = fresh memory).
            doc_starts: (B, S) bool, True at the first token of a document: memories reset there.
            return_state: also return the per-block states after the last token.
            labels: (B, S) next-token ids: return their cross-entropy instead of the logits (`output`).
            reduction: "mean" or "sum" of the loss over tokens.

        Returns:
            logits (B, S, V) in float32 (or the loss), and the list of block states when `return_state`.
        """
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} blocks")
        x = self.embedding(input_ids)  # (B, S, D)
        new_state = []
        for index, block in enumerate(self.blocks):
            x, block_state = block(x, None if state is None else state[index], doc_starts, return_state)
            new_state.append(block_state)
        out = self.output(self.final_norm(x), labels, reduction, self.config.logit_soft_cap)
        return (out, new_state) if return_state else out
