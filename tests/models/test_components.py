"""Components of the blocks against their definitions, written out the slow way in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from xlstm_lm.models.components import (
    BlockDiagonalLinear,
    CausalConv1d,
    GatedFeedForward,
    MultiHeadNorm,
    block_diagonal_as_bmm,
    block_diagonal_as_conv,
    round_up,
    small_init_,
    split_heads,
    wang_init_,
)


def test_round_up():
    assert [round_up(v, 64) for v in (1, 64, 65, 998.4, 2.667 * 4096)] == [64, 64, 128, 1024, 10944]


def conv_by_definition(x, weight, bias, doc_starts=None):
    """y[b, t, c] = bias[c] + sum_j weight[c, j] x[b, t - K + 1 + j, c], same document only."""
    B, S, C = x.shape
    K = weight.shape[1]
    doc = torch.zeros(B, S, dtype=torch.long) if doc_starts is None else doc_starts.long().cumsum(1)
    y = torch.zeros_like(x) + bias
    for b in range(B):
        for t in range(S):
            for j in range(K):
                s = t - K + 1 + j
                if s >= 0 and doc[b, s] == doc[b, t]:
                    y[b, t] += weight[:, j] * x[b, s]
    return y


@pytest.mark.parametrize("with_docs", [False, True])
def test_causal_conv_matches_definition_and_carries_state(with_docs):
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    doc_starts = (torch.rand(2, 11) < 0.25) if with_docs else None
    y, _ = conv(x, doc_starts=doc_starts)
    torch.testing.assert_close(y, conv_by_definition(x, conv.weight, conv.bias, doc_starts))
    # in pieces of 4, 1 and 6 tokens with the state carried: same outputs
    pieces, state, start = [], None, 0
    for length in (4, 1, 6):
        piece_docs = None if doc_starts is None else doc_starts[:, start:start + length]
        out, state = conv(x[:, start:start + length], state, piece_docs)
        pieces.append(out)
        start += length
    torch.testing.assert_close(torch.cat(pieces, 1), y)


@pytest.mark.parametrize("with_docs", [False, True])
def test_causal_conv_gradients_equal_autograd_of_the_definition(with_docs):
    # The conv has a hand-written backward: its gradients (input, state, weight, bias) must equal autograd
    # through the definition, and finite differences.
    torch.manual_seed(0)
    conv = CausalConv1d(5, 4).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    doc_starts = (torch.rand(2, 9) < 0.3) if with_docs else None
    grad_y = torch.randn(2, 9, 5, dtype=torch.float64)
    params = [x, state, conv.weight, conv.bias]
    grads = torch.autograd.grad(conv(x, state, doc_starts)[0], params, grad_y)
    # the definition with the state as the K - 1 inputs before x (they belong to the first token's document)
    padded = torch.cat([state, x], 1)
    padded_docs = None if doc_starts is None else torch.cat([torch.zeros(2, 3, dtype=torch.bool), doc_starts], 1)
    expected = conv_by_definition(padded, conv.weight, conv.bias, padded_docs)[:, 3:]
    for grad, reference in zip(grads, torch.autograd.grad(expected, params, grad_y)):
        torch.testing.assert_close(grad, reference)
    assert torch.autograd.gradcheck(lambda *p: conv(p[0], p[1], doc_starts)[0], (x, state))


def test_causal_conv_keeps_a_bf16_input_in_bf16():
    # Under bf16 autocast the up-projection hands the conv bf16 activations; a float32 weight must not promote
    # the output (and the activation the next layers save) to float32, as an autocast conv1d would not.
    conv = CausalConv1d(8, 4)
    x = torch.randn(2, 7, 8, dtype=torch.bfloat16, requires_grad=True)
    y, state = conv(x, doc_starts=torch.rand(2, 7) < 0.3)
    assert y.dtype == state.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32


def test_block_diagonal_linear_is_a_block_diagonal_matrix():
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(12, 8, num_blocks=4).double()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    dense = torch.block_diag(*layer.weight)  # (12, 8)
    torch.testing.assert_close(layer(x), x @ dense)
    # both ways of computing it (convolution on CPU, batched matmul on GPU), values and gradients, also on
    # a strided input (a chunk of a wider projection)
    wide = torch.randn(3, 5, 24, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, 5, 8, dtype=torch.float64)
    expected = torch.autograd.grad(wide[..., :12] @ dense, (wide, layer.weight), grad_out)
    for product in (block_diagonal_as_conv, block_diagonal_as_bmm):
        y = product(wide[..., :12], layer.weight)
        torch.testing.assert_close(y, wide[..., :12] @ dense)
        for grad, reference in zip(torch.autograd.grad(y, (wide, layer.weight), grad_out), expected):
            torch.testing.assert_close(grad, reference)
    with pytest.raises(ValueError, match="divisible"):
        BlockDiagonalLinear(10, 8, num_blocks=4)
    assert layer(torch.empty(0, 5, 12, dtype=torch.float64)).shape == (0, 5, 8)  # no rows: no convolution


def test_multi_head_norm_normalizes_each_head():
    torch.manual_seed(0)
    norm = MultiHeadNorm(3, 4).double()
    norm.weight.data.uniform_(0.5, 1.5)
    h = torch.randn(2, 5, 3, 4, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0])[:, None].double()
    out = norm(h).view(2, 5, 3, 4) / norm.weight.view(3, 4)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5, 3, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("activation,fn", [("gelu", F.gelu), ("silu", F.silu)])
def test_gated_feed_forward(activation, fn):
    torch.manual_seed(0)
    ffn = GatedFeedForward(8, 16, activation).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    a, b = (x @ ffn.up.weight.T).chunk(2, -1)
    torch.testing.assert_close(ffn(x), (fn(a) * b) @ ffn.down.weight.T)
    with pytest.raises(ValueError, match="activation"):
        GatedFeedForward(8, 16, "relu")


def test_inits_have_the_documented_std():
    torch.manual_seed(0)
    w = torch.empty(512, 512)
    assert small_init_(w, 768).std().item() == pytest.approx(math.sqrt(2 / (5 * 768)), rel=0.02)
    assert wang_init_(w, 768, 24).std().item() == pytest.approx(2 / (24 * math.sqrt(768)), rel=0.02)


def test_split_heads():
    t = torch.arange(2 * 5 * 6.0).view(2, 5, 6)
    assert split_heads(t, 3).shape == (2, 3, 5, 2)
    torch.testing.assert_close(split_heads(t, 3)[1, 2, 4], t[1, 4, 4:6])
