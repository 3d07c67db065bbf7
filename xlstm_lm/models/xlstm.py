"""The xLSTM paper's language model: embedding, a stack of mLSTM/sLSTM blocks, LayerNorm, LM head (DESIGN.md §6).

xLSTM[a:b] mixes a mLSTM blocks for every b sLSTM blocks; the sLSTM positions are explicit
(`slstm_at`) or derived: the paper's published positions for xLSTM[7:1] at 24 and 48 blocks, otherwise
the rule of `place_slstm_blocks`. The forward takes and returns the recurrent state of every block, so
a long sequence can be processed in pieces and text generated one token at a time. The 7B-style stack
has its own module, `xlstm_large`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


from xlstm_lm.kernels import MLSTM_BACKENDS, SLSTM_BACKENDS, mlstm_backend, slstm_backend
from xlstm_lm.models.base import BlockStackConfig, BlockStackLM
from xlstm_lm.models.components import layer_norm, round_up
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.models.slstm import SLSTMBlock

# Positions the xLSTM paper used for its xLSTM[7:1] language models, keyed by number of blocks.
PAPER_SLSTM_AT_7_1 = {24: [3, 20], 48: [3, 5, 7, 40, 42, 44]}


@dataclass
class XLSTMConfig(BlockStackConfig):
    """Architecture of the paper's xLSTM language model."""

    architecture: str = "xlstm"
    ratio: str = "7:1"  # xLSTM[a:b]: a mLSTM blocks per b sLSTM blocks
    slstm_at: Optional[list[int]] = None  # explicit sLSTM block positions; None derives them from `ratio`
    proj_factor: float = 2.0  # mLSTM: inner width = proj_factor * D (rounded up to 64)
    conv_kernel: int = 4
    qkv_block_size: int = 4
    slstm_ffn_factor: float = 1.3

    def __post_init__(self):
        if self.architecture != "xlstm":
            raise ValueError(f"XLSTMConfig.architecture must be 'xlstm', got {self.architecture!r}")
        self.mlstm_slstm_ratio  # validates the ratio string
        if self.slstm_at is not None:
            bad = [p for p in self.slstm_at if not 0 <= p < self.num_blocks]
            if bad or len(set(self.slstm_at)) != len(self.slstm_at):
                raise ValueError(
                    f"model.slstm_at={list(self.slstm_at)} must hold distinct block indices in [0, {self.num_blocks})"
                )
        super().__post_init__()

    def cell_backends(self) -> list:
        return [MLSTM_BACKENDS] + ([SLSTM_BACKENDS] if self.slstm_positions else [])

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


class XLSTMLM(BlockStackLM):
    """The paper's stack of mLSTM and sLSTM blocks, with the recurrent state of every block carried."""

    def __init__(self, config: XLSTMConfig):
        D, NH = config.embedding_dim, config.num_heads
        slstm_at = set(config.slstm_positions)
        kernels = [mlstm_backend(config.backend)] if len(slstm_at) < config.num_blocks else []
        kernels += [slstm_backend(config.backend)] if slstm_at else []
        blocks = [
            SLSTMBlock(D, NH, config.slstm_ffn_factor, conv_kernel=config.conv_kernel, backend=kernels[-1])
            if index in slstm_at else
            MLSTMBlock(D, config.inner_dim, NH, conv_kernel=config.conv_kernel, qkv_block_size=config.qkv_block_size,
                       chunk_size=config.chunk_size, backend=kernels[0])
            for index in range(config.num_blocks)
        ]
        super().__init__(config, blocks, layer_norm(D), kernels)
