"""sLSTM cell in PyTorch: one step for generation and a loop over steps as the native backend (DESIGN.md §5).

    (ĩ, f̃, z̃, õ) = gates_x_t + y_{t-1} R + b
    m_t = max(logσ(f̃) + m_{t-1}, ĩ),   i = exp(ĩ - m_t),   f = exp(logσ(f̃) + m_{t-1} - m_t)
    c_t = f c_{t-1} + i tanh(z̃),   n_t = f n_{t-1} + i,   y_t = σ(õ) c_t / n_t

A fresh state has m = -inf, so the first step gives m_1 = ĩ_1 and f = 0 (no NaN, forward or backward).
m cancels exactly in y, so it carries no gradient. At a document start the state before the step is
replaced by a fresh one (y = c = n = 0, m = -inf): R y_{t-1} then adds exactly nothing, and no gradient
reaches the previous document.

Notation:
    B batch, S sequence length, NH heads, DH head dim; gates in the order (i, f, z, o).
    R (4, NH, DH, DH): R[g, h] maps y_{t-1}[h] (DH in) to gate g of head h (DH out).
    State (y, c, n, m), each (B, NH, DH). The loop runs head-major, states (NH, B, DH), with R fused
    to (NH, DH, 4·DH) so the four gates' recurrent products are one batched matmul per step.
"""

import torch
import torch.nn.functional as F

from ..backends import check_shape, compute_dtype

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


# The loop and its backward are custom operators: torch.compile sees each as one opaque node instead of
# unrolling S Python-level steps into its graph (which took longer to compile than to train).


def _fresh_where(states: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """y, c, n, m stacked (4, ..., NH, B, DH), with a fresh state (0, 0, 0, -inf) where starts (..., 1, B, 1)."""
    fresh = torch.tensor([0.0, 0.0, 0.0, float("-inf")], dtype=states.dtype, device=states.device)
    return torch.where(starts, fresh.view(4, *([1] * (states.dim() - 1))), states)


@torch.library.custom_op("xlstm_lm::slstm_loop", mutates_args=())
def slstm_loop(preX: torch.Tensor, matR: torch.Tensor, y0: torch.Tensor, c0: torch.Tensor, n0: torch.Tensor,
               m0: torch.Tensor, starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step loop, head-major, with a hand-written backward through time (no autograd graph per step).

    Args:
        preX: (S, NH, B, 4·DH) input-side pre-activations plus bias; matR: (NH, DH, 4·DH); y0, c0, n0, m0:
            (NH, B, DH) the initial state; starts: (S, 1, B, 1) bool, True where a document starts (the
            state before that step is replaced by a fresh one), or None for none.

    Returns:
        gates: (S, NH, B, 4·DH) pre-activations with the recurrent part; states: (4, S + 1, NH, B, DH) y, c,
        n, m before the first and after every step (before any reset). Both are kept for the backward, which
        recomputes the gate activations for all steps at once and then runs the only sequential part, the
        recurrence of the state gradients, one step at a time (y_{t-1}, c_{t-1}, n_{t-1}, m_{t-1} of a
        document's first step being the fresh state, dy_{t-1} gets nothing from it):

            dy_t = ∂L/∂y_t + dpre_{t+1} Rᵀ
            dc_t = f_{t+1} dc_{t+1} + dy_t σ(õ_t) / n_t,   dn_t = f_{t+1} dn_{t+1} - dy_t σ(õ_t) c_t / n_t²
            dĩ_t = (dc_t tanh(z̃_t) + dn_t) i_t,   dlogσ(f̃_t) = (dc_t c_{t-1} + dn_t n_{t-1}) f_t,
            dz̃_t = dc_t i_t (1 - tanh²(z̃_t)),   dõ_t = dy_t (c_t / n_t) σ(õ_t) σ(-õ_t)

        (m is detached: it cancels in y). R's gradient is one matmul over all steps at the end.
    """
    S, NH, B, DH4 = preX.shape
    DH = DH4 // 4
    gates = torch.empty_like(preX)
    states = torch.empty((4, S + 1, NH, B, DH), dtype=preX.dtype, device=preX.device)
    states[:, 0] = torch.stack((y0, c0, n0, m0))
    # every per-step view made once: at these sizes each Python-level call costs as much as the math
    gate_steps = [gate.unbind(0) for gate in gates.view(S, NH, B, 4, DH).unbind(-2)]
    y_out, c_out, n_out, m_out = (part[1:].unbind(0) for part in states)
    y_prev, c_prev, n_prev, m_prev = y0, c0, n0, m0
    # which steps start a document somewhere: one device sync, not one per step
    any_starts = [False] * S if starts is None else starts.flatten(1).any(1).tolist()
    for t, (preX_t, gates_t, igate, fgate, zgate, ogate, y, c, n, m, any_starts_t) in enumerate(zip(
        preX.unbind(0), gates.unbind(0), *gate_steps, y_out, c_out, n_out, m_out, any_starts
    )):
        if any_starts_t:
            y_prev, c_prev, n_prev, m_prev = _fresh_where(torch.stack((y_prev, c_prev, n_prev, m_prev)), starts[t])
        torch.baddbmm(preX_t, y_prev, matR, out=gates_t)
        logf_m = F.logsigmoid(fgate).add_(m_prev)
        torch.maximum(logf_m, igate, out=m)
        i = torch.exp(igate - m)
        f = logf_m.sub_(m).exp_()
        torch.addcmul(i * torch.tanh(zgate), f, c_prev, out=c)
        torch.addcmul(i, f, n_prev, out=n)
        torch.mul(torch.sigmoid(ogate), c / n, out=y)
        y_prev, c_prev, n_prev, m_prev = y, c, n, m
    return gates, states


@slstm_loop.register_fake
def _(preX, matR, y0, c0, n0, m0, starts=None):
    S, NH, B, DH4 = preX.shape
    return torch.empty_like(preX), preX.new_empty((4, S + 1, NH, B, DH4 // 4))


@torch.library.custom_op("xlstm_lm::slstm_loop_backward", mutates_args=())
def slstm_loop_backward(dStates: torch.Tensor, matR: torch.Tensor, gates: torch.Tensor, states: torch.Tensor,
                        starts: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of preX, matR, y0, c0, n0 from the gradient of `slstm_loop`'s states (that of m is ignored)."""
    S, NH, B, DH4 = gates.shape
    DH = DH4 // 4
    igate, fgate, zgate, ogate = gates.view(S, NH, B, 4, DH).unbind(-2)
    y, c, n, m = states
    # the state each step starts from: fresh at document starts
    y_prev, c_prev, n_prev, m_prev = states[:, :-1] if starts is None else _fresh_where(states[:, :-1], starts)
    dY, dc_last, dn_last = dStates[0, 1:], dStates[1, -1], dStates[2, -1]
    # the gate activations of every step at once
    i = torch.exp(igate - m[1:])
    f = torch.exp(F.logsigmoid(fgate) + m_prev - m[1:])
    z = torch.tanh(zgate)
    o = torch.sigmoid(ogate)
    h = c[1:] / n[1:]
    # dpre_t = dc_t coef_c + dn_t coef_n + dy_t coef_y, gate by gate (i, f, z, o)
    sig_f = torch.sigmoid(-fgate)
    zeros = torch.zeros_like(i)
    coef_c = torch.stack((z * i, c_prev * f * sig_f, i * (1 - z * z), zeros), dim=-2)  # (S, NH, B, 4, DH)
    coef_n = torch.stack((i, n_prev * f * sig_f, zeros, zeros), dim=-2)
    coef_y = torch.stack((zeros, zeros, zeros, h * o * (1 - o)), dim=-2)
    # dc_t, dn_t gain dy_t (o/n, -o c/n²); f of the next step carries them back
    gain = torch.stack((o / n[1:], -o * h / n[1:]), dim=1)  # (S, 2, NH, B, DH)
    f_next = torch.cat((f[1:], zeros[:1]))  # f_{t+1}, unused at the last step
    dpre = torch.empty_like(gates)
    matRt = matR.mT  # (NH, 4·DH, DH)
    # the carried gradients live in fixed buffers, with their (NH, B, 1, DH) views made once
    dy = dY[-1].clone()
    dcn = torch.stack((dc_last, dn_last))  # (2, NH, B, DH)
    dy4, (dc4, dn4) = dy[:, :, None], dcn[:, :, :, None].unbind(0)
    dpre_next = None  # the last step has no next one
    steps = zip(dY.unbind(0), dpre.unbind(0), dpre.view(S, NH, B, 4, DH).unbind(0), f_next.unbind(0),
                gain.unbind(0), coef_c.unbind(0), coef_n.unbind(0), coef_y.unbind(0))
    for t, (dY_t, dpre_t, dpre4_t, f_next_t, gain_t, coef_c_t, coef_n_t, coef_y_t) in reversed(list(enumerate(steps))):
        if t < S - 1:
            # dy_t gets dpre_{t+1} Rᵀ only where step t + 1 continues the document
            torch.baddbmm(dY_t, dpre_next if starts is None else dpre_next * ~starts[t + 1], matRt, out=dy)
            dcn.mul_(f_next_t)
        dcn.addcmul_(gain_t, dy)
        torch.mul(coef_c_t, dc4, out=dpre4_t)
        dpre4_t.addcmul_(coef_n_t, dn4)
        dpre4_t.addcmul_(coef_y_t, dy4)
        dpre_next = dpre_t
    dy0 = torch.bmm(dpre[0] if starts is None else dpre[0] * ~starts[0], matRt)
    dc0, dn0 = dcn[0] * f[0], dcn[1] * f[0]
    # dR[h] = Σ_t y_{t-1}ᵀ dpre_t over all steps and the batch
    dR = y_prev.transpose(0, 1).reshape(NH, S * B, DH).mT @ dpre.transpose(0, 1).reshape(NH, S * B, DH4)
    return dpre, dR, dy0, dc0, dn0


@slstm_loop_backward.register_fake
def _(dStates, matR, gates, states, starts=None):
    _, NH, B, DH = states.shape[1:]
    return (torch.empty_like(gates), torch.empty_like(matR), *(gates.new_empty((NH, B, DH)) for _ in range(3)))


def _save_for_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], *output, inputs[6] if len(inputs) > 6 else None)
    ctx.set_materialize_grads(False)  # the gates output is never used: no zero-filled gradient for it


def _backward(ctx, _dGates, dStates):
    if dStates is None:
        return (None,) * 7
    matR, gates, states, starts = ctx.saved_tensors
    return (*slstm_loop_backward(dStates, matR, gates, states, starts), None, None)


slstm_loop.register_autograd(_backward, setup_context=_save_for_backward)


def slstm_native(
    gates_x: torch.Tensor,  # (B, S, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState,  # each (B, NH, DH)
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence, one step at a time, with a hand-written backward through time.

    Args:
        gates_x, R, b: as in `xlstm_lm.kernels.slstm.slstm`, already in the compute dtype.
        state: initial (y, c, n, m).
        doc_starts: (B, S) bool or None: a fresh state before each document start.

    Returns:
        y (B, S, NH, DH) and the final state.
    """
    B, S, _, NH, DH = gates_x.shape
    preX = (gates_x + b).permute(1, 3, 0, 2, 4).reshape(S, NH, B, 4 * DH)
    state = [x.transpose(0, 1).contiguous() for x in state]  # (NH, B, DH)
    starts = None if doc_starts is None else doc_starts.T[:, None, :, None].contiguous()  # (S, 1, B, 1)
    _, states = slstm_loop(preX, _fused_recurrent_weights(R), *state, starts)
    y, c, n, m = states[:, -1]  # the final state, (NH, B, DH) each
    final = (y, c, n, m.detach())
    return states[0, 1:].permute(2, 0, 1, 3), tuple(x.transpose(0, 1) for x in final)  # (B, S, NH, DH)


def slstm_native_step(
    gates_x_t: torch.Tensor,  # (B, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState | None,
) -> tuple[torch.Tensor, SLSTMState]:
    """One sLSTM time step in PyTorch: the step of every sLSTM backend (generation).

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
