"""Fused sLSTM kernels in Triton: the whole sequence in one launch, forward and backward (DESIGN.md §5, §13).

One program owns one (batch tile, head): it loads that head's recurrent weights R[:, h] once and keeps
them on chip for every time step, so a step costs four small matrix products and the pointwise update,
with no launch and no round trip of R through memory. Heads too wide for that run the wide kernels at the
end of this file. Launchers and autograd live in `triton.py`.

Forward step (m carries no gradient; a fresh state has m = -inf, so m_1 = ĩ_1 and f = 0):

    (ĩ, f̃, z̃, õ) = gates_x_t + y_{t-1} R + b
    m_t = max(logσ(f̃) + m_{t-1}, ĩ),   i = exp(ĩ - m_t),   f = exp(logσ(f̃) + m_{t-1} - m_t)
    c_t = f c_{t-1} + i tanh(z̃),   n_t = f n_{t-1} + i,   y_t = σ(õ) c_t / n_t

Document starts: where starts[b, t] is set, the state before step t is a fresh one (y = c = n = 0, m = -inf)
in the forward, and the backward reads the state before that step as the fresh one and sends nothing to
∂L/∂y_{t-1} (f = 0 already cuts dc, dn): no value and no gradient crosses a document start.

Backward step, with dy = ∂L/∂y_t (from the output and from step t+1), dc, dn carried from step t+1:

    dõ = dy (c_t/n_t) σ(õ)(1 - σ(õ)),   dc += dy σ(õ) / n_t,   dn -= dy σ(õ) (c_t/n_t) / n_t
    dĩ = (dc tanh(z̃) + dn) i,   dz̃ = dc i (1 - tanh²(z̃)),   df̃ = (dc c_{t-1} + dn n_{t-1}) f σ(-f̃)
    ∂L/∂y_{t-1} += R (dĩ, df̃, dz̃, dõ),   dc ← f dc,   dn ← f dn

Notation:
    B batch, S sequence length, NH heads, DH head dim (on chip: a power of two, 16..128); gates (i, f, z, o).
    BB batch tile (>= 16: tl.dot needs 16 rows on a GPU; rows past B are masked).
    Tiles are held transposed, units × batch (DH, BB), so every product is R_gᵀ (DH, DH) @ y (DH, BB):
    the head dim, not the small batch tile, is the M dimension of the matrix instruction.
    Memory layouts (all contiguous): gates_x, pre, dgates_x (B, S, 4, NH, DH); y, dy (B, S, NH, DH);
    starts (B, S) uint8, 1 at the first step of a document;
    the per-step states c, n, m (B, S + 1, NH, DH) with the initial state at index 0; R (4, NH, DH, DH)
    with R[g, h, d, e] mapping unit d of y_{t-1} to unit e of gate g; b (4, NH, DH); states (B, NH, DH).
    DOT_BF16: the recurrent products take bfloat16 operands (fp32 accumulation), else exact fp32
    ("ieee", no TF32). Everything else is fp32: inputs are upcast right after loading.
"""

import triton
import triton.language as tl


# Note: σ is written out rather than tl.sigmoid: Triton's own @jit library functions are decorated when
# triton is imported, so in a process that imports triton before setting TRITON_INTERPRET=1 they cannot
# run in the interpreter, while these helpers are decorated with the kernels (at their first launch).
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _load(ptr, offsets, mask, other: tl.constexpr = 0.0):
    return tl.load(ptr + offsets, mask=mask, other=other).to(tl.float32)


@triton.jit
def _load_weights(R_ptr, h, NH, DH: tl.constexpr, TRANSPOSE: tl.constexpr, DOT_BF16: tl.constexpr):
    """The four (DH, DH) blocks R[g, h], or their transposes, in the dtype of the products."""
    rows = tl.arange(0, DH)[:, None]
    cols = tl.arange(0, DH)[None, :]
    offsets = h * DH * DH + (cols * DH + rows if TRANSPOSE else rows * DH + cols)
    gate_stride = NH * DH * DH
    dtype = tl.bfloat16 if DOT_BF16 else tl.float32
    R_i = tl.load(R_ptr + offsets).to(dtype)
    R_f = tl.load(R_ptr + gate_stride + offsets).to(dtype)
    R_z = tl.load(R_ptr + 2 * gate_stride + offsets).to(dtype)
    R_o = tl.load(R_ptr + 3 * gate_stride + offsets).to(dtype)
    return R_i, R_f, R_z, R_o


@triton.jit
def _matmul(matR, vec, DOT_BF16: tl.constexpr):
    """matR (DH, DH) @ vec (DH, BB), fp32 result."""
    if DOT_BF16:
        out = tl.dot(matR, vec.to(tl.bfloat16))
    else:
        out = tl.dot(matR, vec, input_precision="ieee")
    return out


@triton.jit
def _tile(B, NH, DH: tl.constexpr, BB: tl.constexpr):
    """This program's head h, its batch rows' offsets b·NH·DH (1, BB) (int64), its units' offsets
    h·DH + d (DH, 1) and the mask of rows < B (1, BB). Their sum indexes a (B, NH, DH) state; a
    (B, L, NH, DH) tensor takes L times the row offsets, a (B, S, 4, NH, DH) one 4·S times."""
    h = tl.program_id(1)
    batch = tl.program_id(0) * BB + tl.arange(0, BB)[None, :]
    return h, batch.to(tl.int64) * NH * DH, h * DH + tl.arange(0, DH)[:, None], batch < B


@triton.jit
def _start_rows(starts_ptr, S, BB: tl.constexpr):
    """This program's rows of starts (B, S), at t = 0: (1, BB) pointers."""
    return starts_ptr + (tl.program_id(0) * BB + tl.arange(0, BB)[None, :]).to(tl.int64) * S


@triton.jit
def _fresh(start, y, c, n, m):
    """The state before a step: a fresh one (0, 0, 0, -inf) where the step starts a document."""
    return (tl.where(start, 0.0, y), tl.where(start, 0.0, c), tl.where(start, 0.0, n),
            tl.where(start, float("-inf"), m))


@triton.jit
def _step_forward(ig, fg, zg, og, c, n, m):
    """One step's pointwise update from the gate pre-activations and the state before it: (y, c, n, m)."""
    logf_m = _logsigmoid(fg) + m
    m = tl.maximum(logf_m, ig)
    i = tl.exp(ig - m)
    f = tl.exp(logf_m - m)
    c = f * c + i * _tanh(zg)
    n = f * n + i
    return _sigmoid(og) * c / n, c, n, m


@triton.jit
def _saved_step(pre, c_ptr, n_ptr, m_ptr, s, gate_stride, mask):
    """What the forward saved of one step: its four pre-activations at `pre` and the state before (at s) and
    after it (at s + gate_stride)."""
    return (_load(pre, 0, mask), _load(pre, gate_stride, mask), _load(pre, 2 * gate_stride, mask),
            _load(pre, 3 * gate_stride, mask), _load(c_ptr, s, mask), _load(n_ptr, s, mask), _load(m_ptr, s, mask),
            _load(c_ptr, s + gate_stride, mask), _load(n_ptr, s + gate_stride, mask, 1.0),  # masked: c / n = 0
            _load(m_ptr, s + gate_stride, mask))


@triton.jit
def _step_backward(ig, fg, zg, og, c_prev, n_prev, m_prev, c, n, m, dy, dc, dn):
    """One step's pointwise backward: the gate gradients (dĩ, df̃, dz̃, dõ) and ∂L/∂c, ∂L/∂n of the state
    before the step, from ∂L/∂y_t (dy) and those of the state after it (dc, dn)."""
    logf = _logsigmoid(fg)
    i = tl.exp(ig - m)
    f = tl.exp(logf + m_prev - m)
    z = _tanh(zg)
    o = _sigmoid(og)
    h_t = c / n
    dh = dy * o
    dc += dh / n
    dn -= dh * h_t / n
    dig = (dc * z + dn) * i
    dfg = (dc * c_prev + dn * n_prev) * f * tl.exp(logf - fg)  # σ(-f̃) = σ(f̃) e^{-f̃}
    dzg = dc * i * (1.0 - z * z)
    dog = dy * h_t * o * (1.0 - o)
    return dig, dfg, dzg, dog, f * dc, f * dn


@triton.jit
def slstm_fw_kernel(
    gx_ptr,  # (B, S, 4, NH, DH) input-side pre-activations, any float dtype
    R_ptr,  # (4, NH, DH, DH) fp32, or bf16 with DOT_BF16
    b_ptr,  # (4, NH, DH) fp32
    y0_ptr, c0_ptr, n0_ptr, m0_ptr,  # (B, NH, DH) fp32 initial state
    y_ptr,  # (B, S, NH, DH) fp32 out
    yS_ptr, cS_ptr, nS_ptr, mS_ptr,  # (B, NH, DH) fp32 out: final state
    pre_ptr,  # (B, S, 4, NH, DH) fp32 out if SAVE: all gate pre-activations
    c_ptr, n_ptr, m_ptr,  # (B, S + 1, NH, DH) fp32 if SAVE: index 0 holds the initial state, t + 1 step t
    starts_ptr,  # (B, S) uint8: document starts
    B, S, NH,
    DH: tl.constexpr, BB: tl.constexpr, DOT_BF16: tl.constexpr, SAVE: tl.constexpr, STARTS: tl.constexpr,
):
    h, rows, units, mask = _tile(B, NH, DH, BB)
    state = rows + units  # (DH, BB) offsets into (B, NH, DH)
    seq = rows * S + units  # into (B, S, NH, DH) at t = 0
    gates = rows * S * 4 + units  # into (B, S, 4, NH, DH) at t = 0, gate i
    saved = rows * (S + 1) + units  # into (B, S + 1, NH, DH) at index 0
    gate_stride = NH * DH  # int32: `on_chip` sends sequences with 4 · S · NH · DH >= 2**31 to the wide kernels
    R_i, R_f, R_z, R_o = _load_weights(R_ptr, h, NH, DH, True, DOT_BF16)
    starts = _start_rows(starts_ptr, S, BB)
    b_i = tl.load(b_ptr + units)
    b_f = tl.load(b_ptr + gate_stride + units)
    b_z = tl.load(b_ptr + 2 * gate_stride + units)
    b_o = tl.load(b_ptr + 3 * gate_stride + units)
    y = _load(y0_ptr, state, mask)  # (DH, BB)
    c = _load(c0_ptr, state, mask)
    n = _load(n0_ptr, state, mask)
    m = _load(m0_ptr, state, mask)
    for t in range(S):
        if STARTS:
            y, c, n, m = _fresh(tl.load(starts + t, mask=mask, other=0) != 0, y, c, n, m)
        x = gx_ptr + gates + t * 4 * gate_stride
        ig = _load(x, 0, mask) + _matmul(R_i, y, DOT_BF16) + b_i
        fg = _load(x, gate_stride, mask) + _matmul(R_f, y, DOT_BF16) + b_f
        zg = _load(x, 2 * gate_stride, mask) + _matmul(R_z, y, DOT_BF16) + b_z
        og = _load(x, 3 * gate_stride, mask) + _matmul(R_o, y, DOT_BF16) + b_o
        y, c, n, m = _step_forward(ig, fg, zg, og, c, n, m)
        tl.store(y_ptr + seq + t * gate_stride, y, mask=mask)
        if SAVE:
            p = pre_ptr + gates + t * 4 * gate_stride
            tl.store(p, ig, mask=mask)
            tl.store(p + gate_stride, fg, mask=mask)
            tl.store(p + 2 * gate_stride, zg, mask=mask)
            tl.store(p + 3 * gate_stride, og, mask=mask)
            s = saved + (t + 1) * gate_stride
            tl.store(c_ptr + s, c, mask=mask)
            tl.store(n_ptr + s, n, mask=mask)
            tl.store(m_ptr + s, m, mask=mask)
    tl.store(yS_ptr + state, y, mask=mask)
    tl.store(cS_ptr + state, c, mask=mask)
    tl.store(nS_ptr + state, n, mask=mask)
    tl.store(mS_ptr + state, m, mask=mask)


@triton.jit
def slstm_bw_kernel(
    dy_ptr,  # (B, S, NH, DH) ∂L/∂y, any float dtype
    dyS_ptr, dcS_ptr, dnS_ptr,  # (B, NH, DH) fp32: ∂L/∂ of the final state
    R_ptr,  # (4, NH, DH, DH) fp32, or bf16 with DOT_BF16
    pre_ptr,  # (B, S, 4, NH, DH) fp32 from the forward
    c_ptr, n_ptr, m_ptr,  # (B, S + 1, NH, DH) fp32 from the forward
    dgx_ptr,  # (B, S, 4, NH, DH) fp32 out: ∂L/∂ of the pre-activations (= of gates_x)
    dy0_ptr, dc0_ptr, dn0_ptr,  # (B, NH, DH) fp32 out: ∂L/∂ of the initial state
    starts_ptr,  # (B, S) uint8: document starts
    B, S, NH,
    DH: tl.constexpr, BB: tl.constexpr, DOT_BF16: tl.constexpr, STARTS: tl.constexpr,
):
    h, rows, units, mask = _tile(B, NH, DH, BB)
    state = rows + units  # (DH, BB) offsets as in the forward
    seq = rows * S + units
    gates = rows * S * 4 + units
    saved = rows * (S + 1) + units
    gate_stride = NH * DH  # int32: `on_chip` sends sequences with 4 · S · NH · DH >= 2**31 to the wide kernels
    R_i, R_f, R_z, R_o = _load_weights(R_ptr, h, NH, DH, False, DOT_BF16)
    starts = _start_rows(starts_ptr, S, BB)
    dy_next = _load(dyS_ptr, state, mask)  # (DH, BB) ∂L/∂y_t through step t + 1 (and the final state)
    dc = _load(dcS_ptr, state, mask)
    dn = _load(dnS_ptr, state, mask)
    for step in range(S):
        t = S - 1 - step
        s = saved + t * gate_stride  # the state before step t; after it at + gate_stride
        ig, fg, zg, og, c_prev, n_prev, m_prev, c, n, m = _saved_step(
            pre_ptr + gates + t * 4 * gate_stride, c_ptr, n_ptr, m_ptr, s, gate_stride, mask)
        if STARTS:
            start = tl.load(starts + t, mask=mask, other=0) != 0
            _, c_prev, n_prev, m_prev = _fresh(start, c_prev, c_prev, n_prev, m_prev)
        dy = _load(dy_ptr, seq + t * gate_stride, mask) + dy_next
        dig, dfg, dzg, dog, dc_prev, dn_prev = _step_backward(ig, fg, zg, og, c_prev, n_prev, m_prev, c, n, m,
                                                              dy, dc, dn)
        d = dgx_ptr + gates + t * 4 * gate_stride
        tl.store(d, dig, mask=mask)
        tl.store(d + gate_stride, dfg, mask=mask)
        tl.store(d + 2 * gate_stride, dzg, mask=mask)
        tl.store(d + 3 * gate_stride, dog, mask=mask)
        dy_next = (
            _matmul(R_i, dig, DOT_BF16) + _matmul(R_f, dfg, DOT_BF16)
            + _matmul(R_z, dzg, DOT_BF16) + _matmul(R_o, dog, DOT_BF16)
        )
        if STARTS:
            dy_next = tl.where(start, 0.0, dy_next)
        dc, dn = dc_prev, dn_prev
    tl.store(dy0_ptr + state, dy_next, mask=mask)
    tl.store(dc0_ptr + state, dc, mask=mask)
    tl.store(dn0_ptr + state, dn, mask=mask)


# --- Heads whose R does not fit on chip (the paper's 192 to 512 units, or fp32 at 128) ---
#
# The same steps, with R read from memory (L2) in (BU, BK) tiles at every step instead of held on chip, and
# the head's units taken in blocks of BU: a step is a loop over unit blocks, each summing its four gate
# pre-activations over blocks of BK units of y_{t-1}. The state is not held in registers either: every
# step writes y, c, n, m to the saved-state buffers and the next step reads them back, after a barrier so
# that each unit block sees all units of the previous step. DH is any width: tiles cover DHP (the next power
# of two) and mask the units past DH. Layouts as above, with y also saved per step: ys (B, S + 1, NH, DH)
# holds y_0 at index 0 and y_t at t + 1, like c, n, m.


@triton.jit
def _wide_tile(B, NH, DH: tl.constexpr, BB: tl.constexpr):
    """This program's head h, its rows' offsets b·NH·DH (1, BB) and the row mask (1, BB)."""
    h = tl.program_id(1)
    batch = tl.program_id(0) * BB + tl.arange(0, BB)[None, :]
    return h, batch.to(tl.int64) * NH * DH, batch < B


@triton.jit
def _load_fresh(ptr, offsets, mask, other: tl.constexpr = 0.0):
    """A value another thread of this program wrote in an earlier step: read past L1 (from L2)."""
    return tl.load(ptr + offsets, mask=mask, other=other, cache_modifier=".cg").to(tl.float32)


@triton.jit
def slstm_fw_wide_kernel(
    gx_ptr,  # (B, S, 4, NH, DH) input-side pre-activations, any float dtype
    R_ptr,  # (4, NH, DH, DH) fp32, or bf16 with DOT_BF16
    b_ptr,  # (4, NH, DH) fp32
    ys_ptr, c_ptr, n_ptr, m_ptr,  # (B, S + 1, NH, DH) fp32: the initial state at index 0 in, step t at t + 1 out
    pre_ptr,  # (B, S, 4, NH, DH) fp32 out if SAVE: all gate pre-activations
    starts_ptr,  # (B, S) uint8: document starts
    B, S, NH,
    DH: tl.constexpr, DHP: tl.constexpr, BU: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr,
    DOT_BF16: tl.constexpr, SAVE: tl.constexpr,
):
    h, rows, row_mask = _wide_tile(B, NH, DH, BB)
    saved = rows * (S + 1) + h * DH  # (1, BB) into (B, S + 1, NH, DH) at index 0, unit 0
    gates = rows * S * 4 + h * DH  # into (B, S, 4, NH, DH) at t = 0, gate i, unit 0
    gate_stride = NH.to(tl.int64) * DH  # int64: t · 4 · NH · DH passes 2**31 in long sequences
    R_head = R_ptr + h * DH * DH
    starts = _start_rows(starts_ptr, S, BB)
    R_gate = NH * DH * DH
    for t in range(S):
        before = saved + t * gate_stride
        start = tl.load(starts + t, mask=row_mask, other=0) != 0
        for u0 in range(0, DHP, BU):
            u = u0 + tl.arange(0, BU)[:, None]  # (BU, 1) units of the gates
            mask = (u < DH) & row_mask
            x = gx_ptr + gates + t * 4 * gate_stride + u
            ig = _load(x, 0, mask) + _load(b_ptr + h * DH, u, u < DH)
            fg = _load(x, gate_stride, mask) + _load(b_ptr + gate_stride + h * DH, u, u < DH)
            zg = _load(x, 2 * gate_stride, mask) + _load(b_ptr + 2 * gate_stride + h * DH, u, u < DH)
            og = _load(x, 3 * gate_stride, mask) + _load(b_ptr + 3 * gate_stride + h * DH, u, u < DH)
            for k0 in range(0, DHP, BK):
                k = k0 + tl.arange(0, BK)
                y_prev = _load_fresh(ys_ptr, before + k[:, None], (k[:, None] < DH) & row_mask & ~start)  # (BK, BB)
                R_mask = (u < DH) & (k[None, :] < DH)
                R_T = k[None, :] * DH + u  # (BU, BK): R[g, h, k, u], transposed
                ig += _matmul(tl.load(R_head + R_T, mask=R_mask, other=0.0), y_prev, DOT_BF16)
                fg += _matmul(tl.load(R_head + R_gate + R_T, mask=R_mask, other=0.0), y_prev, DOT_BF16)
                zg += _matmul(tl.load(R_head + 2 * R_gate + R_T, mask=R_mask, other=0.0), y_prev, DOT_BF16)
                og += _matmul(tl.load(R_head + 3 * R_gate + R_T, mask=R_mask, other=0.0), y_prev, DOT_BF16)
            fresh = mask & ~start  # the state before the step: a fresh one (0, 0, -inf) at a document start
            y, c, n, m = _step_forward(ig, fg, zg, og, _load_fresh(c_ptr, before + u, fresh),
                                       _load_fresh(n_ptr, before + u, fresh),
                                       _load_fresh(m_ptr, before + u, fresh, float("-inf")))
            after = before + gate_stride + u
            tl.store(ys_ptr + after, y, mask=mask)
            tl.store(c_ptr + after, c, mask=mask)
            tl.store(n_ptr + after, n, mask=mask)
            tl.store(m_ptr + after, m, mask=mask)
            if SAVE:
                p = pre_ptr + gates + t * 4 * gate_stride + u
                tl.store(p, ig, mask=mask)
                tl.store(p + gate_stride, fg, mask=mask)
                tl.store(p + 2 * gate_stride, zg, mask=mask)
                tl.store(p + 3 * gate_stride, og, mask=mask)
        tl.debug_barrier()  # step t + 1 reads every unit of step t


@triton.jit
def slstm_bw_wide_kernel(
    dy_ptr,  # (B, S, NH, DH) ∂L/∂y, any float dtype
    R_ptr,  # (4, NH, DH, DH) fp32, or bf16 with DOT_BF16
    pre_ptr,  # (B, S, 4, NH, DH) fp32 from the forward
    c_ptr, n_ptr, m_ptr,  # (B, S + 1, NH, DH) fp32 from the forward
    dgx_ptr,  # (B, S, 4, NH, DH) fp32 out: ∂L/∂ of the pre-activations (= of gates_x)
    dy0_ptr, dc0_ptr, dn0_ptr,  # (B, NH, DH) fp32: ∂L/∂ of the final state in, of the initial state out
    starts_ptr,  # (B, S) uint8: document starts
    B, S, NH,
    DH: tl.constexpr, DHP: tl.constexpr, BU: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr, BP: tl.constexpr,
    DOT_BF16: tl.constexpr,
):
    h, rows, row_mask = _wide_tile(B, NH, DH, BB)
    state = rows + h * DH  # (1, BB) into (B, NH, DH): dy0, dc0, dn0 carry ∂L/∂y_t, ∂L/∂c_t, ∂L/∂n_t
    seq = rows * S + h * DH
    gates = rows * S * 4 + h * DH
    saved = rows * (S + 1) + h * DH
    gate_stride = NH.to(tl.int64) * DH  # int64: t · 4 · NH · DH passes 2**31 in long sequences
    R_head = R_ptr + h * DH * DH
    starts = _start_rows(starts_ptr, S, BB)
    R_gate = NH * DH * DH
    for step in range(S):
        t = S - 1 - step
        s = saved + t * gate_stride  # the state before step t; after it at + gate_stride
        d = dgx_ptr + gates + t * 4 * gate_stride
        start = tl.load(starts + t, mask=row_mask, other=0) != 0
        for u0 in range(0, DHP, BP):  # the pointwise backward of step t, in blocks of BP units
            u = u0 + tl.arange(0, BP)[:, None]
            mask = (u < DH) & row_mask
            ig, fg, zg, og, c_prev, n_prev, m_prev, c, n, m = _saved_step(
                pre_ptr + gates + t * 4 * gate_stride + u, c_ptr, n_ptr, m_ptr, s + u, gate_stride, mask)
            _, c_prev, n_prev, m_prev = _fresh(start, c_prev, c_prev, n_prev, m_prev)
            dy = _load(dy_ptr, seq + t * gate_stride + u, mask) + _load_fresh(dy0_ptr, state + u, mask)
            dig, dfg, dzg, dog, dc_prev, dn_prev = _step_backward(
                ig, fg, zg, og, c_prev, n_prev, m_prev, c, n, m, dy,
                _load_fresh(dc0_ptr, state + u, mask), _load_fresh(dn0_ptr, state + u, mask))
            tl.store(d + u, dig, mask=mask)
            tl.store(d + gate_stride + u, dfg, mask=mask)
            tl.store(d + 2 * gate_stride + u, dzg, mask=mask)
            tl.store(d + 3 * gate_stride + u, dog, mask=mask)
            # read and rewritten in this phase: safe, as the thread that stores an element is one that loaded it
            tl.store(dc0_ptr + state + u, dc_prev, mask=mask)
            tl.store(dn0_ptr + state + u, dn_prev, mask=mask)
        tl.debug_barrier()  # the products below read every unit's gate gradients; dy0 is read above
        for r0 in range(0, DHP, BU):  # ∂L/∂y_{t-1} = Σ_g R_g ∂L/∂pre_g, by blocks of its units
            r = r0 + tl.arange(0, BU)[:, None]  # (BU, 1) units of y
            dy_prev = tl.full((BU, BB), 0.0, tl.float32)  # tl.zeros is a @jit library function: see _sigmoid
            for k0 in range(0, DHP, BK):
                k = k0 + tl.arange(0, BK)
                k_mask = (k[:, None] < DH) & row_mask
                R_mask = (r < DH) & (k[None, :] < DH)
                R_tile = r * DH + k[None, :]  # (BU, BK): R[g, h, r, k]
                dy_prev += _matmul(tl.load(R_head + R_tile, mask=R_mask, other=0.0),
                                   _load_fresh(d, k[:, None], k_mask), DOT_BF16)
                dy_prev += _matmul(tl.load(R_head + R_gate + R_tile, mask=R_mask, other=0.0),
                                   _load_fresh(d + gate_stride, k[:, None], k_mask), DOT_BF16)
                dy_prev += _matmul(tl.load(R_head + 2 * R_gate + R_tile, mask=R_mask, other=0.0),
                                   _load_fresh(d + 2 * gate_stride, k[:, None], k_mask), DOT_BF16)
                dy_prev += _matmul(tl.load(R_head + 3 * R_gate + R_tile, mask=R_mask, other=0.0),
                                   _load_fresh(d + 3 * gate_stride, k[:, None], k_mask), DOT_BF16)
            tl.store(dy0_ptr + state + r, tl.where(start, 0.0, dy_prev), mask=(r < DH) & row_mask)
        tl.debug_barrier()  # the next step reads dy0
