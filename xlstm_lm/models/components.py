"""Building blocks shared by the xLSTM blocks (DESIGN.md §6).

Norms, the causal depthwise convolution (with carried state for chunked prefill and token-by-token
generation), the block-diagonal linear map, the two feed-forward variants and the two inits.

Notation (DESIGN.md §3): B batch, S sequence length, NH heads, DH head dim, D model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value (widths are rounded up to 64 for fast matmuls)."""
    return int(math.ceil(value / multiple) * multiple)


def split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, NH * d) -> (B, NH, S, d), the layout of the cell kernels."""
    B, S, _ = t.shape
    return t.view(B, S, num_heads, -1).transpose(1, 2)


def small_init_(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Small init N(0, sqrt(2 / (5 dim))) for input projections and embeddings."""
    return nn.init.normal_(weight, mean=0.0, std=math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(weight: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """Wang init N(0, 2 / (num_blocks sqrt(dim))) for the output projection of each block."""
    return nn.init.normal_(weight, mean=0.0, std=2.0 / (num_blocks * math.sqrt(dim)))


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap · tanh(x / cap): bounded, smooth, the identity near zero."""
    return cap * torch.tanh(x / cap)


def input_and_forget_gates(x: torch.Tensor, igate: nn.Linear, fgate: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """igate(x), fgate(x) as one matmul: with a handful of outputs per gate, the cost of each product (and of
    its backward) is reading x, so two separate ones cost twice as much."""
    weight, bias = torch.cat([igate.weight, fgate.weight]), torch.cat([igate.bias, fgate.bias])
    return F.linear(x, weight, bias).split([igate.out_features, fgate.out_features], dim=-1)


def layer_norm(dim: int, eps: float = 1e-5) -> nn.LayerNorm:
    """LayerNorm with a weight and no bias (the paper blocks' pre-norm)."""
    return nn.LayerNorm(dim, eps=eps, bias=False)


def rms_norm(dim: int, eps: float = 1e-6) -> nn.RMSNorm:
    """RMSNorm with a weight (the large block's pre-norm)."""
    return nn.RMSNorm(dim, eps=eps)


class MultiHeadNorm(nn.Module):
    """LayerNorm applied to each head separately (no bias), then one weight over all heads.

    Normalizing per head keeps heads whose memories have very different scales comparable.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, S, NH, DH) -> (B, S, NH * DH)."""
        normed = F.layer_norm(h, (self.head_dim,), eps=self.eps)
        return normed.flatten(-2) * self.weight


class _DepthwiseTaps(torch.autograd.Function):
    """y_t = bias + Σ_j w_j ⊙ x_{t-K+1+j} [⊙ keep_{t,j}] over a left-padded input, with a hand-written backward.

    The same sums as a depthwise `conv1d`, done as K scaled adds over shifted views: on CPU this is several
    times faster than the convolution's backward, and it takes the per-tap document masks directly.
    """

    @staticmethod
    def forward(ctx, padded, weight, bias, keep):
        """padded (B, K-1+S, C), weight (C, K), bias (C), keep (B, S, K) float mask or None -> y (B, S, C)."""
        K = weight.shape[1]
        S = padded.shape[1] - K + 1
        y = None
        for tap in range(K):
            shifted = padded[:, tap:tap + S]
            if keep is not None:
                shifted = shifted * keep[:, :, tap, None]
            y = torch.addcmul(bias, shifted, weight[:, tap]) if y is None else y.addcmul_(shifted, weight[:, tap])
        ctx.save_for_backward(padded, weight, keep)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        padded, weight, keep = ctx.saved_tensors
        K = weight.shape[1]
        S = grad_y.shape[1]
        grad_padded = torch.zeros_like(padded)
        grad_weight = torch.empty_like(weight)
        for tap in range(K):
            grad_tap = grad_y if keep is None else grad_y * keep[:, :, tap, None]
            grad_padded[:, tap:tap + S].addcmul_(grad_tap, weight[:, tap])
            grad_weight[:, tap] = (grad_tap * padded[:, tap:tap + S]).sum((0, 1))
        return grad_padded, grad_weight, grad_y.sum((0, 1)), None


class CausalConv1d(nn.Module):
    """Causal depthwise 1-d convolution over time with a carried state.

    The state holds the last `kernel_size - 1` inputs, so a sequence processed in pieces (or one
    token at a time, S = 1, for generation) gives the same outputs as one pass. With `doc_starts`,
    taps never reach back across the start of a document.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))  # tap j multiplies x_{t-K+1+j}
        self.bias = nn.Parameter(torch.zeros(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.kernel_size)  # PyTorch's default for a depthwise conv (fan_in = K)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, doc_starts: torch.Tensor | None = None):
        """x (B, S, C), state (B, K-1, C) or None, doc_starts (B, S) bool or None -> (y (B, S, C), state)."""
        B, S, _ = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, self.channels)
        padded = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+S, C)
        new_state = padded[:, S:]
        keep = None
        if doc_starts is not None:
            # document index of every padded position; the state belongs to the document in progress
            doc = F.pad(doc_starts.long().cumsum(dim=1), (K - 1, 0))  # (B, K-1+S)
            keep = torch.stack([doc[:, tap:tap + S] == doc[:, K - 1:] for tap in range(K)], dim=-1).to(x.dtype)
            # inputs of a finished document must not reach the next piece either
            new_state = new_state * (doc[:, S:] == doc[:, -1:]).unsqueeze(-1)
        # in the input's dtype, as an autocast conv1d would be (a float32 weight would promote bf16 inputs)
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return _DepthwiseTaps.apply(padded, weight, bias, keep), new_state

class BlockDiagonalLinear(nn.Module):
    """Linear map whose matrix is block-diagonal: `num_blocks` independent (in/nb x out/nb) maps.

    Used for the per-head q/k/v projections of the paper mLSTM block (blocks of 4) and the
    head-wise gate projections of the sLSTM block (one block per head).
    """

    def __init__(self, in_features: int, out_features: int, num_blocks: int):
        super().__init__()
        if in_features % num_blocks or out_features % num_blocks:
            raise ValueError(
                f"BlockDiagonalLinear: in_features {in_features} and out_features {out_features} "
                f"must both be divisible by num_blocks {num_blocks}"
            )
        self.in_features, self.out_features, self.num_blocks = in_features, out_features, num_blocks
        self.weight = nn.Parameter(
            torch.empty(num_blocks, in_features // num_blocks, out_features // num_blocks)
        )
        nn.init.normal_(self.weight, std=math.sqrt(num_blocks / in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        block_in = self.in_features // self.num_blocks
        if x.device.type == "cpu" and block_in <= 32 and x.numel():
            return block_diagonal_as_conv(x, self.weight)
        return block_diagonal_as_bmm(x, self.weight)


def block_diagonal_as_bmm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., nb * i) times the blocks weight (nb, i, o) as one batched matmul over the blocks (GPU, and
    CPU blocks wider than 32)."""
    blocks = x.unflatten(-1, (weight.shape[0], -1))  # (..., nb, i)
    return torch.einsum("...bi,bio->...bo", blocks, weight).flatten(-2)


def block_diagonal_as_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same product as a grouped 1x1 convolution over the rows seen as channels-last pixels (CPU, narrow
    blocks).

    Note: oneDNN runs this without the transposes the batched matmul needs (blocks as the batch
    dimension); forward + backward it is about 3x faster with blocks of 4, 1.4x with 32, and slower from
    blocks of 64-128 on (2.5x slower with 4 blocks of 192).
    """
    num_blocks, block_in, block_out = weight.shape
    pixels = x.reshape(1, 1, -1, num_blocks * block_in).permute(0, 3, 1, 2)  # (1, in, 1, rows), channels last
    kernel = weight.transpose(1, 2).reshape(num_blocks * block_out, block_in, 1, 1)
    out = F.conv2d(pixels, kernel, groups=num_blocks)  # (1, out, 1, rows)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], num_blocks * block_out)


class GatedFeedForward(nn.Module):
    """Gated FFN: down(act(a) * b) with [a, b] = up(x). GELU gives the sLSTM block's FFN, SiLU SwiGLU."""

    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        if activation not in ("gelu", "silu"):
            raise ValueError(f"GatedFeedForward: activation must be 'gelu' or 'silu', got {activation!r}")
        self.activation = F.gelu if activation == "gelu" else F.silu
        self.up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def init_weights(self, dim: int, num_blocks: int) -> None:
        small_init_(self.up.weight, dim)
        wang_init_(self.down.weight, dim, num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(self.activation(gate) * value)
