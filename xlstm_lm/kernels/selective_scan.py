"""Mamba's selective scan (Gu & Dao 2023, Mamba-1): a diagonal linear recurrence whose step sizes depend on the input.

Notation: B batch, S sequence length, E inner channels (expand · D), N state size per channel.
Per channel e and state index n, with a_t = exp(Δ_t A) (zero-order hold) and Euler's input term:

    h_t = exp(Δ_t[e] A[e, n]) h_{t-1} + Δ_t[e] B_t[n] x_t[e]
    y_t[e] = Σ_n C_t[n] h_t[e, n]

At a document start the state before the token is dropped (h_{t-1} := 0), so documents packed in one row
never see each other. The skip term D ⊙ x and the output gate stay with the caller.

Backends: `native` is a chunked scan in PyTorch with a hand-written backward: the forward keeps only the
state at every chunk start (B, S / L, E, N) and the backward recomputes each chunk's states, so memory does not
grow with S · E · N as plain autograd over a loop would. Inside a chunk the scan runs in two levels (pieces
of about sqrt(L) steps scanned at once, then chained), and the backward is the same scan reversed in time. On a GPU with `mamba_ssm` installed, a fresh-state
scan without document starts runs its fused CUDA kernel (`selective_scan_fn`); that kernel takes no initial
state and no resets, so the other calls run natively there too.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@lru_cache(maxsize=1)
def cuda_selective_scan() -> Optional[Callable]:
    """mamba_ssm's fused kernel, or None when the package (or its CUDA extension) is not installed. Imported only
    when a CUDA input asks for it: the package needs a GPU build."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def _decay_and_input(x, dt, A, B, keep):
    """a = keep · exp(Δ A) and u = Δ x B for a slice of time steps: each (B, L, E, N)."""
    a = torch.exp(dt[..., None] * A)
    if keep is not None:
        a = a * keep[:, :, None, None]
    return a, (dt * x)[..., None] * B[:, :, None, :]


def _states(a, u, h):
    """h_t = a_t h_{t-1} + u_t over the L steps of a chunk from h (B, E, N): all states (B, L, E, N).

    Two levels, so the Python loop runs about 2 sqrt(L) steps instead of L: every piece of w steps is scanned
    from zero at once (with its running decay product), then the piece starts are chained, then added in.
    """
    L = u.shape[1]
    width = math.isqrt(L - 1) + 1  # ceil(sqrt(L))
    count = -(-L // width)
    if count * width > L:  # pad with steps that keep the state: a = 1, u = 0
        pad = (0, 0, 0, 0, 0, count * width - L)
        a, u = F.pad(a, pad, value=1.0), F.pad(u, pad)
    # (w, B, count, E, N): step i of every piece is one contiguous slice
    a, u = (t.unflatten(1, (count, width)).movedim(2, 0).contiguous() for t in (a, u))
    local, decay = torch.empty_like(u), torch.empty_like(a)  # from a zero state; product of a since the piece start
    local[0], decay[0] = u[0], a[0]
    for i in range(1, width):
        torch.addcmul(u[i], a[i], local[i - 1], out=local[i])
        torch.mul(decay[i - 1], a[i], out=decay[i])
    starts = torch.empty_like(local[0])  # (B, count, E, N): the state before each piece
    for k in range(count):
        starts[:, k] = h
        h = torch.addcmul(local[-1, :, k], decay[-1, :, k], h)
    return torch.addcmul(local, decay, starts).movedim(0, 2).flatten(1, 2)[:, :L]


class _SelectiveScan(torch.autograd.Function):
    """The native scan: forward keeps the chunk-start states, backward recomputes a chunk at a time."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, keep, chunk_size):
        with torch.autocast(x.device.type, enabled=False):  # the scan computes in its inputs' dtype
            return _SelectiveScan._forward(ctx, x, dt, A, B, C, h0, keep, chunk_size)

    @staticmethod
    def _forward(ctx, x, dt, A, B, C, h0, keep, chunk_size):
        S = x.shape[1]
        starts, h, ys = [], h0, []
        for start in range(0, S, chunk_size):
            piece = slice(start, start + chunk_size)
            a, u = _decay_and_input(x[:, piece], dt[:, piece], A, B[:, piece], None if keep is None else keep[:, piece])
            states = _states(a, u, h)
            starts.append(h)
            ys.append(torch.einsum("blen,bln->ble", states, C[:, piece]))
            h = states[:, -1]
        ctx.save_for_backward(x, dt, A, B, C, keep, torch.stack(starts, 1))
        ctx.chunk_size = chunk_size
        return torch.cat(ys, 1), h

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        with torch.autocast(grad_y.device.type, enabled=False):
            return _SelectiveScan._backward(ctx, grad_y, grad_h)

    @staticmethod
    def _backward(ctx, grad_y, grad_h):
        x, dt, A, B, C, keep, starts = ctx.saved_tensors
        L = ctx.chunk_size
        grads = {name: [] for name in ("x", "dt", "B", "C")}
        grad_A = torch.zeros_like(A)
        g = grad_h  # d loss / d h at the end of the current chunk
        for index in reversed(range(starts.shape[1])):
            piece = slice(index * L, (index + 1) * L)
            xs, dts, Bs, Cs, dys = x[:, piece], dt[:, piece], B[:, piece], C[:, piece], grad_y[:, piece]
            a, u = _decay_and_input(xs, dts, A, Bs, None if keep is None else keep[:, piece])
            h0 = starts[:, index]
            states = _states(a, u, h0)
            # d loss / d h_t, through y_t and every later step: the same recurrence run backwards in time,
            # g_t = C_t dy_t + a_{t+1} g_{t+1}, entered with the gradient reaching the chunk's last state
            later_decay = torch.cat([torch.ones_like(a[:, :1]), a[:, 1:].flip(1)], 1)
            grad_states = _states(later_decay, (dys[..., None] * Cs[:, :, None, :]).flip(1), g).flip(1)
            g = a[:, 0] * grad_states[:, 0]
            previous = torch.cat([h0[:, None], states[:, :-1]], 1)
            grad_log_a = grad_states * previous * a  # d loss / d (Δ A)
            grad_dtx = torch.einsum("blen,bln->ble", grad_states, Bs)  # d loss / d (Δ x)
            grads["x"].append(grad_dtx * dts)
            grads["dt"].append(grad_dtx * xs + torch.einsum("blen,en->ble", grad_log_a, A))
            grads["B"].append(torch.einsum("blen,ble->bln", grad_states, dts * xs))
            grads["C"].append(torch.einsum("blen,ble->bln", states, dys))
            grad_A += torch.einsum("blen,ble->en", grad_log_a, dts)
        grad_x, grad_dt, grad_B, grad_C = (torch.cat(grads[name][::-1], 1) for name in ("x", "dt", "B", "C"))
        return grad_x, grad_dt, grad_A, grad_B, grad_C, g, None, None


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   state: Optional[torch.Tensor] = None, doc_starts: Optional[torch.Tensor] = None,
                   chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan over a sequence, continuing `state`.

    Args:
        x: (B, S, E) inputs.
        dt: (B, S, E) step sizes Δ (positive: softplus already applied).
        A: (E, N) state matrix diagonal (negative).
        B, C: (B, S, N) input and output projections of the state.
        state: (B, E, N) state before the first step, or None (zeros).
        doc_starts: (B, S) bool, True at the first token of a document: the state before it is dropped.
        chunk_size: steps per recomputed chunk of the native backward (memory, not results).

    Returns:
        y (B, S, E) in x's dtype and the state after the last step (B, E, N), float32 (float64 for float64
        inputs), as every cell's state is.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.is_cuda and state is None and doc_starts is None and (kernel := cuda_selective_scan()) is not None:
        y, h = kernel(x.transpose(1, 2), dt.transpose(1, 2), A.to(dtype), B.transpose(1, 2), C.transpose(1, 2),
                      return_last_state=True)
        return y.transpose(1, 2).to(x.dtype), h.to(dtype)
    Bsz, S, E = x.shape
    if state is None:
        state = x.new_zeros(Bsz, E, A.shape[1], dtype=dtype)
    keep = None if doc_starts is None else (~doc_starts).to(dtype)
    y, h = _SelectiveScan.apply(x.to(dtype), dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), state.to(dtype),
                                keep, chunk_size)
    return y.to(x.dtype), h
