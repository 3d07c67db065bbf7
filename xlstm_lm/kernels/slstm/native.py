"""sLSTM cell in PyTorch: one step for generation and a loop over steps as the native backend (DESIGN.md §5).

    (ĩ, f̃, z̃, õ) = gates_x_t + y_{t-1} R + b
    m_t = max(logσ(f̃) + m_{t-1}, ĩ),   i = exp(ĩ - m_t),   f = exp(logσ(f̃) + m_{t-1} - m_t)
    c_t = f c_{t-1} + i tanh(z̃),   n_t = f n_{t-1} + i,   y_t = σ(õ) c_t / n_t

A fresh state has m = -inf, so the first step gives m_1 = ĩ_1 and f = 0 (no NaN, forward or backward).
m cancels exactly in y, so it carries no gradient.

Notation:
    B batch, S sequence length, NH heads, DH head dim; gates in the order (i, f, z, o).
    R (4, NH, DH, DH): R[g, h] maps y_{t-1}[h] (DH in) to gate g of head h (DH out).
    State (y, c, n, m), each (B, NH, DH). The loop runs head-major, states (NH, B, DH), with R fused
    to (NH, DH, 4·DH) so the four gates' recurrent products are one batched matmul per step.
"""

import torch
import torch.nn.functional as F

from .._dispatch import check_shape, compute_dtype

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def prepare_state(
    state: SLSTMState | None, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
) -> SLSTMState:
    """Check a user state against shape = (B, NH, DH) and cast it to dtype; None gives a fresh state.

    Raises:
        ValueError: a state that is not a (y, c, n, m) tuple of the right shapes.
    """
    if state is None:
        zeros = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(3)]
        return (*zeros, torch.full(shape, float("-inf"), dtype=dtype, device=device))
    if len(state) != 4:
        raise ValueError(f"state must be a tuple (y, c, n, m), got {len(state)} tensors")
    for name, x in zip("ycnm", state):
        check_shape(f"state {name}", x, shape, "(B, NH, DH)")
    y, c, n, m = (x.to(dtype) for x in state)
    return y, c, n, m.detach()


def check_weights(R: torch.Tensor, b: torch.Tensor, NH: int, DH: int) -> None:
    """Raise ValueError unless R is (4, NH, DH, DH) and b is (4, NH, DH)."""
    check_shape("R", R, (4, NH, DH, DH), "(4, NH, DH, DH)")
    check_shape("b", b, (4, NH, DH), "(4, NH, DH)")


def _fused_recurrent_weights(R: torch.Tensor) -> torch.Tensor:
    """(4, NH, DH, DH) -> (NH, DH, 4·DH), gate g in columns g·DH .. (g+1)·DH."""
    _, NH, DH, _ = R.shape
    return R.permute(1, 2, 0, 3).reshape(NH, DH, 4 * DH)


def _cell_step(preX: torch.Tensor, matR: torch.Tensor, state: SLSTMState) -> SLSTMState:
    """One step, head-major.

    Args:
        preX: (NH, B, 4·DH) input-side pre-activations plus bias.
        matR: (NH, DH, 4·DH) fused recurrent weights.
        state: (y, c, n, m), each (NH, B, DH).

    Returns:
        The new state, same shapes.
    """
    y, c, n, m = state
    DH = y.shape[-1]
    gates = torch.baddbmm(preX, y, matR).unflatten(-1, (4, DH))  # (NH, B, 4, DH)
    igate, fgate, zgate, ogate = gates.unbind(-2)
    logf_m = F.logsigmoid(fgate) + m
    m_new = torch.maximum(logf_m, igate).detach()
    i = torch.exp(igate - m_new)
    f = torch.exp(logf_m - m_new)
    c = f * c + i * torch.tanh(zgate)
    n = f * n + i
    return torch.sigmoid(ogate) * (c / n), c, n, m_new


def slstm_native(
    gates_x: torch.Tensor,  # (B, S, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState,  # each (B, NH, DH)
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence, one step at a time.

    Args:
        gates_x, R, b: as in `xlstm_lm.kernels.slstm.slstm`, already in the compute dtype.
        state: initial (y, c, n, m).

    Returns:
        y (B, S, NH, DH) and the final state.
    """
    B, S, _, NH, DH = gates_x.shape
    preX = (gates_x + b).permute(1, 3, 0, 2, 4).reshape(S, NH, B, 4 * DH)
    matR = _fused_recurrent_weights(R)
    state = tuple(x.transpose(0, 1) for x in state)  # (NH, B, DH)
    outputs = []
    # unbind, not indexing: its backward stacks the gradients once instead of once per step
    for preX_t in preX.unbind(0):
        state = _cell_step(preX_t, matR, state)
        outputs.append(state[0])
    y = torch.stack(outputs, dim=1).permute(2, 1, 0, 3)  # (NH, S, B, DH) -> (B, S, NH, DH)
    return y, tuple(x.transpose(0, 1) for x in state)


def slstm_step(
    gates_x_t: torch.Tensor,  # (B, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState | None,
) -> tuple[torch.Tensor, SLSTMState]:
    """One sLSTM time step, for generation.

    Args:
        gates_x_t: (B, 4, NH, DH) input-side gate pre-activations of one token, order (i, f, z, o).
        R: (4, NH, DH, DH) recurrent weights, b: (4, NH, DH) biases.
        state: (y, c, n, m) each (B, NH, DH), or None for a fresh state.

    Returns:
        y (B, NH, DH) in the dtype of gates_x_t, and the new state in float32 (float64 for float64 inputs).

    Raises:
        ValueError: mismatched shapes.
    """
    if gates_x_t.dim() != 4 or gates_x_t.shape[1] != 4:
        raise ValueError(f"gates_x_t must have shape (B, 4, NH, DH), got {tuple(gates_x_t.shape)}")
    B, _, NH, DH = gates_x_t.shape
    check_weights(R, b, NH, DH)
    dtype = compute_dtype(gates_x_t.dtype)
    state = prepare_state(state, (B, NH, DH), dtype, gates_x_t.device)
    preX = (gates_x_t.to(dtype) + b.to(dtype)).permute(2, 0, 1, 3).reshape(NH, B, 4 * DH)
    state = _cell_step(preX, _fused_recurrent_weights(R.to(dtype)), tuple(x.transpose(0, 1) for x in state))
    state = tuple(x.transpose(0, 1) for x in state)
    return state[0].to(gates_x_t.dtype), state
