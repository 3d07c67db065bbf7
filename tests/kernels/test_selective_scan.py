"""Mamba's selective scan against a float64 sequential reference written out here, forward and gradients; state
passing; exact resets at document starts; the fused CUDA kernel only on CUDA inputs."""

import pytest
import torch
import torch.nn.functional as F

from xlstm_lm.kernels import selective_scan as scan_module
from xlstm_lm.kernels.selective_scan import selective_scan

B, S, E, N = 2, 37, 6, 5  # S a multiple of no chunk size tried


def reference(x, dt, A, Bm, C, h, doc_starts):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t (h_{t-1} dropped at a document start), y_t = Σ_n C_t h_t: one step at
    a time."""
    ys = []
    for t in range(x.shape[1]):
        if doc_starts is not None:
            h = torch.where(doc_starts[:, t, None, None], torch.zeros_like(h), h)
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1), h


@pytest.fixture
def inputs(rng):
    def randn(*shape):
        return torch.randn(shape, generator=rng, dtype=torch.float64)

    doc_starts = torch.rand(B, S, generator=rng) < 0.1
    doc_starts[:, 0], doc_starts[:, 20] = False, True  # the initial state matters, and at least one reset a row
    return dict(x=randn(B, S, E), dt=F.softplus(randn(B, S, E) - 1), A=-torch.exp(randn(E, N)), Bm=randn(B, S, N),
                C=randn(B, S, N), h=randn(B, E, N)), doc_starts


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_native_scan_matches_the_float64_reference(compare_to_reference, inputs, dtype, tol):
    values, doc_starts = inputs

    def native(x, dt, A, Bm, C, h):
        return selective_scan(x, dt, A, Bm, C, h, doc_starts, chunk_size=8)

    compare_to_reference(native, lambda **kw: reference(**kw, doc_starts=doc_starts), values, fwd_tol=tol,
                         grad_tol=tol * 10, dtype=dtype)


def test_pieces_with_the_state_carried_equal_one_run_and_chunks_change_nothing(inputs):
    values, doc_starts = inputs
    x, dt, A, Bm, C, h = values.values()
    y, final = selective_scan(x, dt, A, Bm, C, h, doc_starts, chunk_size=16)
    torch.testing.assert_close(selective_scan(x, dt, A, Bm, C, h, doc_starts, chunk_size=5), (y, final),
                               rtol=1e-13, atol=1e-13)
    pieces, state = [], h
    for piece in (slice(0, 11), slice(11, 12), slice(12, S)):
        out, state = selective_scan(x[:, piece], dt[:, piece], A, Bm[:, piece], C[:, piece], state,
                                    doc_starts[:, piece], chunk_size=4)
        pieces.append(out)
    torch.testing.assert_close((torch.cat(pieces, 1), state), (y, final), rtol=1e-13, atol=1e-13)
    # a reset forgets everything before it: the outputs from position 20 on do not depend on the initial state
    other, _ = selective_scan(x, dt, A, Bm, C, torch.zeros_like(h), doc_starts, chunk_size=16)
    torch.testing.assert_close(other[:, 20:], y[:, 20:], rtol=0, atol=0)
    assert not torch.allclose(other[:, :1], y[:, :1])


def test_the_cuda_kernel_is_never_asked_for_on_cpu(inputs, monkeypatch):
    values, _ = inputs

    def refuse():
        raise AssertionError("the CUDA kernel was looked up for CPU tensors")

    monkeypatch.setattr(scan_module, "cuda_selective_scan", refuse)
    x, dt, A, Bm, C, _ = values.values()
    y, final = selective_scan(x.float(), dt.float(), A.float(), Bm.float(), C.float())
    assert y.dtype == final.dtype == torch.float32 and final.shape == (B, E, N)


@pytest.mark.skipif(not torch.cuda.is_available() or scan_module.cuda_selective_scan() is None,
                    reason="needs a GPU and mamba_ssm")
def test_cuda_kernel_matches_the_native_scan(inputs):
    values, _ = inputs
    x, dt, A, Bm, C, _ = (t.float().cuda() for t in values.values())
    fused = selective_scan(x, dt, A, Bm, C)  # fresh state, no resets: mamba_ssm's kernel
    native = scan_module._SelectiveScan.apply(x, dt, A, Bm, C, torch.zeros_like(values["h"]).float().cuda(), None, 64)
    torch.testing.assert_close(fused, native, rtol=1e-4, atol=1e-4)
