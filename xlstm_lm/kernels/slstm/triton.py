"""The fused Triton sLSTM backend: launchers and the autograd function (DESIGN.md §5, §8, §13).

The forward kernel runs the whole sequence in one launch and, when a gradient is needed, saves the gate
pre-activations and the states (c, n, m) of every step (O(S) memory per batch row and head, like the
activations themselves). The backward kernel runs backpropagation through time in one launch, in reverse,
and writes ∂L/∂gates_x for every step and ∂L/∂ of the initial state. Two pairs of kernels: where a head's
R fits on chip (DH a power of two in [16, 128]; at 128 in bf16 only on a GPU) it stays there for the whole
sequence; every other head (the paper's 192 to 512 units) runs the wide pair, which reads R from memory in
tiles at every step and passes the state between steps through memory (`on_chip` chooses).

Note: ∂L/∂R and ∂L/∂b are not accumulated inside the backward kernel. ∂L/∂R[g, h] = Σ_{b,t} y_{t-1}ᵀ
∂L/∂pre_g is a (DH, DH) sum per gate: for DH = 128 the four fp32 accumulators alone are 256 KiB per
program, more than the registers and the shared memory of an SM, next to R itself. One batched matmul
over all B·S rows after the kernel computes the same sum from tensors that exist anyway (the outputs y and
the kernel's ∂L/∂gates_x), at full tensor-core size, with no cross-program reduction.

Notation:
    B batch, S sequence length, NH heads, DH head dim; gates (i, f, z, o).
    State (y, c, n, m), each (B, NH, DH); m carries no gradient. See `triton_kernels` for the kernels'
    tiles and memory layouts.
"""

import torch
import triton

from ..backends import triton_kernels
from .native import SLSTMState

BATCH_TILE = 16  # rows of y per program: tl.dot needs at least 16 on a GPU
MIN_DH, MAX_DH = 16, 128
# R of a head must stay on chip: DH = 128 in bf16 (128 KiB) compiles to 136-140 KiB of shared memory for
# sm_90, in float32 (256 KiB) it needs about 272-296 KiB, more than the 227 KiB an SM offers
MAX_R_BYTES_ON_GPU = 128 * 1024


def on_chip(gates_x: torch.Tensor) -> bool:
    """Whether a head's R can stay on chip for the whole sequence (the faster kernels); else the wide kernels
    read it from memory at every step. Those also take sequences whose offsets pass int32 (4 · S · NH · DH
    elements: the on-chip kernels index time in int32, where int64 offsets would make them spill)."""
    _, S, _, NH, DH = gates_x.shape
    if DH & (DH - 1) or not MIN_DH <= DH <= MAX_DH or 4 * S * NH * DH >= 2**31:
        return False
    R_bytes = 4 * DH * DH * (2 if gates_x.dtype in (torch.bfloat16, torch.float16) else 4)
    return not (gates_x.is_cuda and R_bytes > MAX_R_BYTES_ON_GPU)


def _launch_config(B: int, NH: int, DH: int) -> tuple[tuple[int, int], dict]:
    """Grid and meta-parameters shared by the forward and the backward launches of the on-chip kernels.

    Note: sm_90 compiles (tests/kernels/test_slstm_triton.py) chose them: one warp per 8 rows of R
    (4 warps up to DH = 32, 8 at 64, 16 at 128) is the fewest with no register spills, and a single
    stage (no software pipelining of the per-step loads) keeps the backward at DH = 128 within shared
    memory (three stages need about 300 KiB).
    """
    return (triton.cdiv(B, BATCH_TILE), NH), {"DH": DH, "BB": BATCH_TILE, "num_warps": max(4, DH // 8), "num_stages": 1}


def _wide_launch_config(B: int, NH: int, DH: int, backward: bool = False) -> tuple[tuple[int, int], dict]:
    """Grid and meta-parameters of the wide kernels: products in tiles of (at most) 64 x 64 units of the
    padded head DHP; the backward's pointwise part in blocks of 16 units.

    Note: sm_90 compiles chose them (tests/kernels/test_slstm_triton.py, without the divisibility hints of a
    real launch, which needs fewer): at 4 warps both kernels spill (255 registers); at 8 warps the forward
    needs about 125 registers, and the backward about 235 with pointwise blocks of 16 units (255, at the
    limit, with 32; it spilled with 64).
    """
    DHP = max(MIN_DH, triton.next_power_of_2(DH))
    block = min(64, DHP)
    config = {"DH": DH, "DHP": DHP, "BU": block, "BK": block, "BB": BATCH_TILE, "num_warps": 8, "num_stages": 1}
    return (triton.cdiv(B, BATCH_TILE), NH), config | ({"BP": min(16, DHP)} if backward else {})


class _SLSTMFunction(torch.autograd.Function):
    """(save, gates_x, R, b, y0, c0, n0, m0, starts, has_starts) -> (y, y_S, c_S, n_S, m_S); m0 and m_S carry no
    gradient. save: keep what the backward needs (off under torch.no_grad, where nothing is saved).
    has_starts: whether the on-chip kernels read starts (the wide ones always do).

    Note: the on-chip kernels compile the document-start code only when there are starts: at DH = 128 the
    backward with it spills (48 bytes of stack on sm_90, test_slstm_triton.py), without it it does not."""

    @staticmethod
    def forward(ctx, save, gates_x, R, b, y0, c0, n0, m0, starts, has_starts):
        ctx.wide = not on_chip(gates_x)
        # the interpreter's bf16 arithmetic is broken (DESIGN.md §9): there the products stay fp32
        dot_bf16 = gates_x.dtype in (torch.bfloat16, torch.float16) and not triton.knobs.runtime.interpret
        # bf16 in memory, so the products read R as stored (a conversion in the kernel would make
        # Triton hold R in registers as the matrix operand, and DH = 128 would spill)
        R_dot = R.to(torch.bfloat16) if dot_bf16 else R
        launch = _wide_forward if ctx.wide else _on_chip_forward
        y, final, pre, saved = launch(save, dot_bf16, gates_x, R_dot, b, y0, c0, n0, m0, starts, has_starts)
        ctx.has_starts = has_starts
        if save:
            ctx.save_for_backward(R_dot, y0, y, pre, starts, *saved)
            ctx.gates_dtype, ctx.dot_bf16 = gates_x.dtype, dot_bf16
        ctx.mark_non_differentiable(final[3])
        return y, *final

    @staticmethod
    def backward(ctx, dy, dy_S, dc_S, dn_S, _dm_S):
        kernels = triton_kernels(__package__)
        R_dot, y0, y, pre, starts, c, n, m = ctx.saved_tensors
        B, S, _, NH, DH = pre.shape
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        final_grads = [torch.zeros((B, NH, DH), dtype=torch.float32, device=y.device) if g is None
                       else g.float().contiguous() for g in (dy_S, dc_S, dn_S)]
        dgates = torch.empty_like(pre)
        if ctx.wide:  # updates the final state's gradients in place, step by step, to the initial state's
            grid, config = _wide_launch_config(B, NH, DH, backward=True)
            initial_grads = [g.clone() for g in final_grads]
            kernels.slstm_bw_wide_kernel[grid](dy, R_dot, pre, c, n, m, dgates, *initial_grads, starts, B, S, NH,
                                       DOT_BF16=ctx.dot_bf16, **config)
        else:
            grid, config = _launch_config(B, NH, DH)
            initial_grads = [torch.empty_like(g) for g in final_grads]
            kernels.slstm_bw_kernel[grid](
                dy, *final_grads, R_dot, pre, c, n, m, dgates, *initial_grads, starts, B, S, NH,
                DOT_BF16=ctx.dot_bf16, STARTS=ctx.has_starts, **config,
            )
        # ∂L/∂R[g, h, d, e] = Σ_{b,t} y_{t-1}[b, h, d] ∂L/∂pre[b, t, g, h, e], y_{t-1} = 0 at document starts
        y_prev = torch.cat([y0[:, None], y[:, :-1]], dim=1).masked_fill(starts.bool()[..., None, None], 0.0)
        dR = torch.einsum("bshd,bsghe->ghde", y_prev, dgates)
        db = dgates.sum(dim=(0, 1))  # (4, NH, DH)
        return None, dgates.to(ctx.gates_dtype), dR, db, *initial_grads, None, None, None


def _on_chip_forward(save, dot_bf16, gates_x, R_dot, b, y0, c0, n0, m0, starts, has_starts):
    """The on-chip forward kernel's launch: y, the final state, and (when saving) the pre-activations and
    the per-step c, n, m (the initial state at index 0)."""
    B, S, _, NH, DH = gates_x.shape
    grid, config = _launch_config(B, NH, DH)
    f32 = {"dtype": torch.float32, "device": gates_x.device}
    y = torch.empty((B, S, NH, DH), **f32)
    final = [torch.empty((B, NH, DH), **f32) for _ in range(4)]
    if save:
        pre = torch.empty((B, S, 4, NH, DH), **f32)
        saved = [torch.empty((B, S + 1, NH, DH), **f32) for _ in range(3)]  # c, n, m; initial at 0
        for buffer, initial in zip(saved, (c0, n0, m0)):
            buffer[:, 0] = initial
    else:  # never written: SAVE is off
        pre, saved = y, [y] * 3
    triton_kernels(__package__).slstm_fw_kernel[grid](gates_x, R_dot, b, y0, c0, n0, m0, y, *final, pre, *saved, starts, B, S, NH,
                          DOT_BF16=dot_bf16, SAVE=save, STARTS=has_starts, **config)
    return y, final, pre, saved


def _wide_forward(save, dot_bf16, gates_x, R_dot, b, y0, c0, n0, m0, starts, _has_starts):
    """The wide forward kernel's launch, with the outputs of `_on_chip_forward`. Every step's state goes
    through memory: y, c, n, m (B, S + 1, NH, DH), the initial state at index 0, are written always."""
    B, S, _, NH, DH = gates_x.shape
    grid, config = _wide_launch_config(B, NH, DH)
    f32 = {"dtype": torch.float32, "device": gates_x.device}
    states = [torch.empty((B, S + 1, NH, DH), **f32) for _ in range(4)]
    for buffer, initial in zip(states, (y0, c0, n0, m0)):
        buffer[:, 0] = initial
    pre = torch.empty((B, S, 4, NH, DH), **f32) if save else states[0]  # never written without SAVE
    triton_kernels(__package__).slstm_fw_wide_kernel[grid](gates_x, R_dot, b, *states, pre, starts, B, S, NH, DOT_BF16=dot_bf16,
                                                           SAVE=save, **config)
    return states[0][:, 1:].contiguous(), [x[:, S].contiguous() for x in states], pre, states[1:]


def slstm_triton(
    gates_x: torch.Tensor,  # (B, S, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState,  # each (B, NH, DH)
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence in two fused Triton kernels (forward, backward through time).

    Args:
        gates_x: (B, S, 4, NH, DH) input-side pre-activations, float32, or bfloat16 / float16, which
            make the recurrent products bfloat16 with fp32 accumulation (on a GPU; the interpreter keeps
            them fp32).
        R, b: as in `xlstm_lm.kernels.slstm.slstm`; computed in float32.
        state: initial (y, c, n, m).
        doc_starts: (B, S) bool or None: a fresh state before each document start.

    Returns:
        y (B, S, NH, DH) and the final state, float32.

    Raises:
        RuntimeError: CPU tensors while the Triton interpreter is off (TRITON_INTERPRET=1 turns it on).
        ValueError: float64 inputs (it computes in float32).
    """
    if not gates_x.is_cuda and not triton.knobs.runtime.interpret:
        raise RuntimeError(
            "the triton sLSTM backend needs CUDA tensors (or TRITON_INTERPRET=1 for the Triton interpreter); "
            "use backend='native' on the CPU"
        )
    if gates_x.dtype == torch.float64:
        raise ValueError("the triton sLSTM backend computes in float32; use backend='native' for float64")
    f32 = [x.float().contiguous() for x in (R, b, *state)]
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (gates_x, *f32))
    B, S = gates_x.shape[:2]
    starts = (torch.zeros((B, S), dtype=torch.uint8, device=gates_x.device) if doc_starts is None
              else doc_starts.to(torch.uint8).contiguous())
    y, *final = _SLSTMFunction.apply(save, gates_x.contiguous(), *f32, starts, doc_starts is not None)
    return y, tuple(final)
