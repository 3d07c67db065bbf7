"""Triton kernels of the chunkwise mLSTM: forward, backward and the generation step (DESIGN.md §4, §13).

Only @triton.jit code lives here; launchers, block shapes and autograd are in `triton.py`.

Forward (chunkwise form of DESIGN.md §4):
    `chunk_states_kernel`   the states (C, n, m) before every chunk and after the last, sequentially over
                            chunks; also writes b, the cumulative log forget gate inside each chunk.
    `chunk_outputs_kernel`  h of every chunk from the state before it (parallel over chunks).
Backward (the extended value [v, 1] turns the normalizer into one more value column):
    `row_scales_kernel`     per step 1/N_r and the split parts of the decay matrices (note on precision).
    `den_grad_kernel`       per step δ_r, the gradient reaching den_r through N_r, exact where pairs cancel,
                            and the row and column sums of the pair terms the gate gradients need.
    `state_grads_kernel`    dC, dn after every chunk, sequentially over chunks in reverse (dC0, dn0 last),
                            and Y_c, the part of the gate gradient through the state that chunk c decays.
    `grad_q_kernel`, `grad_k_kernel`, `grad_v_kernel`   dq, dk, dv of every chunk (in the activations'
                            dtype); grad_v also the state's part of the gate gradients (see there).
    `grad_gates_kernel`     dĩ, df̃ of every chunk from those sums (see `triton.py`).
Generation: `step_kernel`, one time step with the state in and out.

Note: reductions and scans call tl.reduce / tl.associative_scan with the standard library's combine
functions (_ADD, _MAX), not tl.sum, tl.max, tl.cumsum, tl.zeros or tl.cdiv: those are @triton.jit
functions decorated when triton is first imported, and if that happened before TRITON_INTERPRET=1 was set
they cannot run in the interpreter. The kernels here only need the variable set before this module is
imported (which `triton.py` delays to the first launch); the interpreter recognizes these two combine
functions and reduces with numpy (any other combine function runs element by element, 10x slower).

Documents (HAS_STARTS): `First` (BH, NC·L) int32 holds, per step, the index of the document start at or
before it (-1 for the document that continues the initial state; steps past S repeat step S - 1's). Each
document then runs as if alone, as the native chunkwise form does: b restarts at every start (a segmented
scan), the decay matrix is exactly 0 between documents (s < first_r), rows past a start in their chunk see
a fresh state (β = 0, m_prev = 0), only the chunk's last document writes the next state, and the old state
is dropped (decay 0) where the chunk holds a start. Every such zero is a `where`, so no gradient crosses a
start, not even by rounding. Without starts the kernels compile without any of it (no extra loads).

The last chunk may be partial: steps t >= S are masked with logσ(f̃) = 0 and ĩ = -inf, so they neither
contribute nor decay the state, which then equals the state after step S.

Notation:
    BH = B·NH flattened batch and heads, S sequence length, L chunk length, NC = ceil(S / L) chunks,
    DQK key/query head dim, DV value head dim; BK, BV block sizes over DQK, DV; BLQ rows of a chunk per
    block (columns use the same size), BLC steps per block in the sequential kernels.
    Inside a chunk, row r and column s: b_r = Σ_{u≤r} logσ(f̃_u), logD_rs = b_r - b_s + ĩ_s (s ≤ r),
    m_r the row stabilizer max(b_r + m_prev, max_s logD_rs), D'_rs = exp(logD_rs - m_r),
    β_r = exp(b_r + m_prev - m_r); a_s = b_L - b_s + ĩ_s the weight of step s in the next state.
    h_r = num_r / N_r with N_r = max(|den_r|, exp(-m_r)) + eps.
    Precision: b is summed in float64, and every exponent built from it (b_r - b_s + ĩ_s - m_r, β_r, a_s,
    the state decays) is formed in float64 before exp in float32. A float32 sum of logσ(f̃) loses the low
    bits of b_r - b_s once |b| is large (logσ(f̃) near -30 for the extreme gates of DESIGN.md §9: |b| grows
    to 30·L inside a chunk), which made h 10-100x less accurate than the float64-b native form. In the
    (rows, columns) tiles the float64 row part b_r - m_r and column part ĩ_s - b_s are split into two
    float32 numbers each (`_split`), so the tiles stay float32 and their sum is exact where it matters
    (near 0, the large terms). The forward forms these parts itself; for the backward row_scales_kernel
    stores them once (`Parts`, (BH, 4, S): row hi, row lo, column hi, column lo), which keeps float64
    arithmetic out of the register-bound gradient kernels.
    Memory layout (contiguous): q, k (BH, S, DQK); v, h (BH, S, DV); i, f, m_r, den (BH, S); b (BH, NC·L)
    float64;
    chunk states C (BH, NC + 1, DQK, DV), n (BH, NC + 1, DQK), m (BH, NC + 1); index c = state before
    chunk c, index NC = final state. Activations fp32 or bf16 (upcast on load) and their
    gradients dq, dk, dv in the same dtype; b and the gate-gradient sums fp64; everything else fp32.
    DOT_DTYPE is the operand dtype of the matrix products (bf16 for bf16 inputs on a GPU, so Hopper uses
    HGMMA), PRECISION their fp32 mode ("tf32x3" keeps float32 accuracy on tensor cores).
"""

import triton
import triton.language as tl


def _combine(fn):
    """A standard-library combine function as this module needs it: as it is under the interpreter (which
    recognizes it), else compiled from its source (it is an interpreted one if triton was imported with
    TRITON_INTERPRET=1 set)."""
    return fn if triton.knobs.runtime.interpret else triton.jit(fn.fn)


_ADD = _combine(tl.standard._sum_combine)
_MAX = _combine(tl.standard._elementwise_max)


@triton.jit
def _logsigmoid(x):
    """logσ(x) = min(x, 0) - log1p(exp(-|x|)), log1p(z) as log(u)·z/(u - 1), u = 1 + z (exact for small z)."""
    z = tl.exp(-tl.abs(x))
    u = 1.0 + z
    exact = u == 1.0
    log1p = tl.where(exact, z, tl.log(u) * z / tl.where(exact, 1.0, u - 1.0))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def _dot(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with operands in DOT_DTYPE, accumulated in fp32."""
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _gates(I, F, t, S):
    """(logσ(f̃), ĩ) at steps t in float64 (logσ evaluated in float32, as the native form does); steps
    t >= S are masked to (0, -inf)."""
    valid = t < S
    logf = tl.where(valid, _logsigmoid(tl.load(F + t, mask=valid, other=0.0).to(tl.float32)), 0.0)
    igate = tl.where(valid, tl.load(I + t, mask=valid, other=0.0).to(tl.float32), float("-inf"))
    return logf.to(tl.float64), igate.to(tl.float64)


@triton.jit
def _segment_add(x, start_x, y, start_y):
    """Combine function of a sum that restarts where start (int32) is set (a segmented scan)."""
    return tl.where(start_y != 0, y, x + y), start_x | start_y


@triton.jit
def _block_gates(I, F, First, t, t0, carry, first_last, S, BLC: tl.constexpr, HAS_STARTS: tl.constexpr):
    """For one block of BLC steps t of a chunk, starting at t0: b (carry: b before the block), b at the
    block's last step, and ĩ. With documents b restarts at every start, and ĩ is -inf outside the chunk's
    last document (first_last its start): only that one writes the next state."""
    logf, igate = _gates(I, F, t, S)
    if HAS_STARTS:
        first = tl.load(First + t)
        segments, _ = tl.associative_scan((logf, (first == t).to(tl.int32)), 0, _segment_add)
        vecB = tl.where(first < t0, carry, 0.0) + segments
        carry = tl.reduce(tl.where(t == t0 + BLC - 1, vecB, 0.0), 0, _ADD)
        igate = tl.where(first == first_last, igate, float("-inf"))
    else:
        vecB = carry + tl.associative_scan(logf, 0, _ADD)
        carry += tl.reduce(logf, 0, _ADD)
    return vecB, carry, igate


@triton.jit
def _split(x):
    """float64 x as hi + lo, two float32 numbers: a sum of two such splits, (hi + hi') + (lo + lo'), is
    exact to float32 rounding of the result where hi and hi' (nearly) cancel. An infinite x (an input
    gate of -inf: nothing written) keeps lo = 0, not inf - inf."""
    hi = x.to(tl.float32)
    return hi, tl.where(tl.abs(hi) < float("inf"), (x - hi.to(tl.float64)).to(tl.float32), 0.0)


@triton.jit
def _exp64(x):
    """exp of a float64 exponent, in float32."""
    return tl.exp(x.to(tl.float32))


@triton.jit
def _state_tile(DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """(bh, DQK block, DV block) of a program over BH·cdiv(DQK, BK)·cdiv(DV, BV).

    Note: the tiles of one head are neighbours in launch order, so they run at the same time and read
    the same steps of k, v (q, dh) from the L2 cache instead of each from memory.
    """
    NK: tl.constexpr = (DQK + BK - 1) // BK
    NV: tl.constexpr = (DV + BV - 1) // BV
    pid = tl.program_id(0)
    return (pid // (NK * NV)).to(tl.int64), (pid // NV) % NK, pid % NV


@triton.jit
def chunk_states_kernel(
    K, V, I, F,  # (BH, S, DQK), (BH, S, DV), (BH, S), (BH, S)
    C0, N0, M0,  # (BH, DQK, DV), (BH, DQK), (BH)
    Cs, Ns, Ms,  # out: (BH, NC + 1, DQK, DV), (BH, NC + 1, DQK), (BH, NC + 1)
    Bv,  # out: (BH, NC·L) float64
    First,  # (BH, NC·L) int32 with HAS_STARTS (module note on documents)
    S, NC,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLC: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·cdiv(DQK, BK)·cdiv(DV, BV),): one (BK, BV) tile of C through all chunks in order."""
    bh, pk, pv = _state_tile(DQK, DV, BK, BV)
    offs_k = pk * BK + tl.arange(0, BK)
    offs_v = pv * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tile_kv = offs_k[:, None] * DV + offs_v[None, :]
    lead = (pk == 0) & (pv == 0)  # the program that writes m and b
    K, V, I, F = K + bh * S * DQK, V + bh * S * DV, I + bh * S, F + bh * S
    Cs, Ns, Ms, Bv = Cs + bh * (NC + 1) * DQK * DV, Ns + bh * (NC + 1) * DQK, Ms + bh * (NC + 1), Bv + bh * NC * L
    First += bh * NC * L

    matC = tl.load(C0 + bh * DQK * DV + tile_kv, mask=mask_kv, other=0.0)  # (BK, BV)
    vecN = tl.load(N0 + bh * DQK + offs_k, mask=mask_k, other=0.0)  # (BK,)
    scaM = tl.load(M0 + bh)  # float32, as stored: every kernel uses the stored value
    for c in range(NC):
        tl.store(Cs + c * DQK * DV + tile_kv, matC, mask=mask_kv)
        tl.store(Ns + c * DQK + offs_k, vecN, mask=mask_k & (pv == 0))
        tl.store(Ms + c, scaM, mask=lead)
        # pass 1: b inside the chunk, g = b_L and max_s (ĩ_s - b_s), so that max_s a_s = g + that
        carry = tl.full((), 0.0, tl.float64)
        max_ib = tl.full((), float("-inf"), tl.float64)
        if HAS_STARTS:
            first_last = tl.load(First + c * L + L - 1)
            reset = first_last >= c * L  # the chunk holds a start: the old state is dropped (a fresh one has m 0)
            scaMprev = tl.where(reset, 0.0, scaM).to(tl.float64)
        else:
            first_last = -1
            scaMprev = scaM.to(tl.float64)
        for j in range(L // BLC):
            t = c * L + j * BLC + tl.arange(0, BLC)
            vecB, carry, igate = _block_gates(I, F, First, t, c * L + j * BLC, carry, first_last, S, BLC, HAS_STARTS)
            tl.store(Bv + t, vecB, mask=(t >= 0) & lead)
            max_ib = tl.maximum(max_ib, tl.reduce(igate - vecB, 0, _MAX))
        scaG = carry
        scaMnew = (scaG + tl.maximum(scaMprev, max_ib)).to(tl.float32)
        scaDecay = _exp64(scaG + scaMprev - scaMnew.to(tl.float64))
        if HAS_STARTS:
            scaDecay = tl.where(reset, 0.0, scaDecay)
        matC = scaDecay * matC
        vecN = scaDecay * vecN
        # pass 2: add Σ_s exp(a_s - m_new) k_s v_sᵀ
        carry = tl.full((), 0.0, tl.float64)
        for j in range(L // BLC):
            t = c * L + j * BLC + tl.arange(0, BLC)
            vecB, carry, igate = _block_gates(I, F, First, t, c * L + j * BLC, carry, first_last, S, BLC, HAS_STARTS)
            vecW = _exp64(scaG - vecB + igate - scaMnew.to(tl.float64))  # (BLC,), 0 at masked steps
            valid = t < S
            matK = tl.load(K + t[:, None] * DQK + offs_k[None, :], mask=valid[:, None] & mask_k[None, :], other=0.0)
            matV = tl.load(V + t[:, None] * DV + offs_v[None, :], mask=valid[:, None] & mask_v[None, :], other=0.0)
            matKw = matK.to(tl.float32) * vecW[:, None]  # (BLC, BK)
            matC += _dot(tl.trans(matKw), matV, DOT_DTYPE, PRECISION)
            vecN += tl.reduce(matKw, 0, _ADD)
        scaM = scaMnew
    tl.store(Cs + NC * DQK * DV + tile_kv, matC, mask=mask_kv)
    tl.store(Ns + NC * DQK + offs_k, vecN, mask=mask_k & (pv == 0))
    tl.store(Ms + NC, scaM, mask=lead)


@triton.jit
def _row_parts(Parts, t, S):
    """The split row parts b_t - m_t (hi, lo) of row_scales_kernel at steps t (0 past S)."""
    return tl.load(Parts + t, mask=t < S, other=0.0), tl.load(Parts + S + t, mask=t < S, other=0.0)


@triton.jit
def _column_parts(Parts, t, S):
    """The split column parts ĩ_t - b_t (hi, lo) of row_scales_kernel at steps t (-inf past S)."""
    return (tl.load(Parts + 2 * S + t, mask=t < S, other=float("-inf")),
            tl.load(Parts + 3 * S + t, mask=t < S, other=0.0))


@triton.jit
def _decay(row_hi, row_lo, col_hi, col_lo, t_r, t_s, S, TRANSPOSE: tl.constexpr, first_r, HAS_STARTS: tl.constexpr):
    """D'_rs = exp((b_r - m_r) + (ĩ_s - b_s)) for s ≤ r < S in one document (s ≥ first_r, with HAS_STARTS),
    else 0: (len(t_r), len(t_s)), or its transpose, from both parts split into float32 pairs (see the
    module's note on precision)."""
    if TRANSPOSE:
        keep = (t_s[:, None] <= t_r[None, :]) & (t_r[None, :] < S)
        if HAS_STARTS:
            keep = keep & (t_s[:, None] >= first_r[None, :])
        logD = (row_hi[None, :] + col_hi[:, None]) + (row_lo[None, :] + col_lo[:, None])
    else:
        keep = (t_s[None, :] <= t_r[:, None]) & (t_r[:, None] < S)
        if HAS_STARTS:
            keep = keep & (t_s[None, :] >= first_r[:, None])
        logD = (row_hi[:, None] + col_hi[None, :]) + (row_lo[:, None] + col_lo[None, :])
    return tl.exp(tl.where(keep, logD, float("-inf")))


@triton.jit
def _rows(NT: tl.constexpr, NC, L: tl.constexpr, BLQ: tl.constexpr):
    """(bh, chunk c, block index j of BLQ rows inside it, steps t, column tile) of a program over
    BH·NC·(L / BLQ)·NT, NT column tiles per block of rows.

    Note: the column tiles of a block of rows are neighbours in launch order, so the rows they all load
    come from the L2 cache after the first.
    """
    NQ: tl.constexpr = L // BLQ
    pid = tl.program_id(0)
    tile = pid % NT
    pid = pid // NT
    bh = (pid // (NC * NQ)).to(tl.int64)
    c = (pid // NQ) % NC
    j = pid % NQ
    return bh, c, j, c * L + j * BLQ + tl.arange(0, BLQ), tile


@triton.jit
def chunk_outputs_kernel(
    Q, K, V, I,  # (BH, S, DQK), (BH, S, DQK), (BH, S, DV), (BH, S)
    Bv, Cs, Ns, Ms,  # from chunk_states_kernel
    H,  # out: (BH, S, DV)
    Mr, Den,  # out: (BH, S) row stabilizer m_r and den_r, for the backward
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLQ: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·NC·(L / BLQ)·cdiv(DV, BV),): h for BLQ rows of one chunk and BV value columns."""
    bh, c, jq, t_r, pv = _rows((DV + BV - 1) // BV, NC, L, BLQ)
    offs_v = pv * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    valid_r = t_r < S
    Q, K, V, I, Bv = Q + bh * S * DQK, K + bh * S * DQK, V + bh * S * DV, I + bh * S, Bv + bh * NC * L
    state = bh * (NC + 1) + c
    scaM = tl.load(Ms + state).to(tl.float64)
    vecB_r = tl.load(Bv + t_r)  # (BLQ,) float64
    # row stabilizer m_r = b_r + max(m_prev, max_{s≤r} (ĩ_s - b_s)): the earlier blocks' maxima, then a
    # running maximum over this block's own steps, which are the rows (a masked reduction: the interpreter
    # cannot scan with a maximum). With documents, rows past a start in the chunk take m_prev = 0 (a fresh
    # state) and the maxima run over their own document: the earlier blocks' steps count only for the rows
    # of the document of the block's first row (first0), the only one that can reach back past it.
    if HAS_STARTS:
        First += bh * NC * L
        first_r = tl.load(First + t_r)
        first0 = tl.load(First + c * L + jq * BLQ)
        scaRowMax = tl.where(first0 >= c * L, 0.0, scaM)
    else:
        first_r = t_r  # unused
        first0 = -1
        scaRowMax = scaM
    for js in range(jq):
        t_s = c * L + js * BLQ + tl.arange(0, BLQ)
        valid_s = t_s < S
        if HAS_STARTS:
            valid_s = valid_s & (t_s >= first0)
        igate = tl.load(I + t_s, mask=valid_s, other=float("-inf")).to(tl.float64)
        scaRowMax = tl.maximum(scaRowMax, tl.reduce(igate - tl.load(Bv + t_s), 0, _MAX))
    vecCol = tl.load(I + t_r, mask=valid_r, other=float("-inf")).to(tl.float64) - vecB_r
    causal = t_r[None, :] <= t_r[:, None]
    if HAS_STARTS:
        causal = causal & (t_r[None, :] >= first_r[:, None])
        vecRowInit = tl.where(first_r == first0, scaRowMax, 0.0)
    else:
        vecRowInit = scaRowMax
    vecRowMax = tl.maximum(tl.reduce(tl.where(causal, vecCol[None, :], float("-inf")), 1, _MAX), vecRowInit)
    vecM = (vecB_r + vecRowMax).to(tl.float32)  # stored and used in float32, by the backward too
    vecBeta = _exp64(vecB_r + scaM - vecM.to(tl.float64))
    if HAS_STARTS:
        vecBeta = tl.where(first_r >= c * L, 0.0, vecBeta)
    # inter-chunk part: β q̂ᵀ C_prev, β q̂ᵀ n_prev
    matNum = tl.full((BLQ, BV), 0.0, tl.float32)
    vecDen = tl.full((BLQ,), 0.0, tl.float32)
    for kk in range((DQK + BK - 1) // BK):
        offs_k = kk * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        matQ = tl.load(Q + t_r[:, None] * DQK + offs_k[None, :], mask=valid_r[:, None] & mask_k[None, :], other=0.0)
        matC = _state_tile_of_C(Cs, state, offs_k, offs_v, DQK, DV)
        vecN = tl.load(Ns + state * DQK + offs_k, mask=mask_k, other=0.0)
        matNum += _dot(matQ, matC, DOT_DTYPE, PRECISION)
        vecDen += tl.reduce(matQ.to(tl.float32) * vecN[None, :], 1, _ADD)
    matNum *= (scale * vecBeta)[:, None]
    vecDen *= scale * vecBeta
    # intra-chunk part: Σ_s D'_rs (q̂_r·k_s) [v_s, 1]
    row_hi, row_lo = _split(tl.load(Bv + t_r) - vecM.to(tl.float64))
    for js in range(jq + 1):
        t_s = c * L + js * BLQ + tl.arange(0, BLQ)
        valid_s = t_s < S
        matP = _row_dots(Q, K, t_r, t_s, S, DQK, BLQ, BK, DOT_DTYPE, PRECISION)
        col_hi, col_lo = _split(tl.load(I + t_s, mask=t_s < S, other=0.0).to(tl.float64) - tl.load(Bv + t_s))
        matS = matP * scale * _decay(row_hi, row_lo, col_hi, col_lo, t_r, t_s, S, False, first_r,
                                     HAS_STARTS)  # (BLQ, BLQ)
        matV = tl.load(V + t_s[:, None] * DV + offs_v[None, :], mask=valid_s[:, None] & mask_v[None, :], other=0.0)
        matNum += _dot(matS, matV, DOT_DTYPE, PRECISION)
        vecDen += tl.reduce(matS, 1, _ADD)
    vecNorm = tl.maximum(tl.abs(vecDen), tl.exp(-vecM)) + eps
    matH = matNum / vecNorm[:, None]
    tl.store(H + bh * S * DV + t_r[:, None] * DV + offs_v[None, :], matH.to(H.dtype.element_ty),
             mask=valid_r[:, None] & mask_v[None, :])
    tl.store(Mr + bh * S + t_r, vecM, mask=valid_r & (pv == 0))
    tl.store(Den + bh * S + t_r, vecDen, mask=valid_r & (pv == 0))


@triton.jit
def row_scales_kernel(
    I, Mr, Den,  # (BH, S)
    Bv,  # (BH, NC·L) float64
    InvN,  # out: (BH, S)
    Parts,  # out: (BH, 4, S) the split row and column parts of the decay matrices (module note)
    S, NC, eps,
    L: tl.constexpr, BLS: tl.constexpr,
):
    """Grid (BH, cdiv(S, BLS)): 1/N_r and the parts b_r - m_r, ĩ_r - b_r, each split into two float32."""
    bh = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLS + tl.arange(0, BLS)
    valid = t < S
    vecM = tl.load(Mr + bh * S + t, mask=valid, other=0.0)
    vecDen = tl.load(Den + bh * S + t, mask=valid, other=0.0)
    tl.store(InvN + bh * S + t, 1.0 / (tl.maximum(tl.abs(vecDen), tl.exp(-vecM)) + eps), mask=valid)
    vecB = tl.load(Bv + bh * NC * L + t, mask=valid, other=0.0)
    row_hi, row_lo = _split(vecB - vecM.to(tl.float64))
    col_hi, col_lo = _split(tl.load(I + bh * S + t, mask=valid, other=0.0).to(tl.float64) - vecB)
    Parts += bh * 4 * S
    tl.store(Parts + t, row_hi, mask=valid)
    tl.store(Parts + S + t, row_lo, mask=valid)
    tl.store(Parts + 2 * S + t, col_hi, mask=valid)
    tl.store(Parts + 3 * S + t, col_lo, mask=valid)


@triton.jit
def _row_firsts(First, bh, NC, t_r, L: tl.constexpr, HAS_STARTS: tl.constexpr):
    """The index of the document start at or before each row t_r (rows themselves without starts: unused)."""
    if HAS_STARTS:
        return tl.load(First + bh * NC * L + t_r)
    return t_r


@triton.jit
def _rows_after_state(InvN, Parts, First, Ms, bh, c, t_r, S, NC, L: tl.constexpr, HAS_STARTS: tl.constexpr):
    """What the backward kernels need of rows t_r of chunk c (Parts already at head bh): valid_r, the index of
    the state before the chunk, 1 / N_r, the row parts, the rows' document starts and β_r = exp(b_r + m_prev - m_r),
    the weight of that state in row r (0 past S and in rows past a start in the chunk, which do not see it)."""
    valid_r = t_r < S
    state = bh * (NC + 1) + c
    vecInvN = tl.load(InvN + bh * S + t_r, mask=valid_r, other=0.0)
    row_hi, row_lo = _row_parts(Parts, t_r, S)
    first_r = _row_firsts(First, bh, NC, t_r, L, HAS_STARTS)
    seen = valid_r & (first_r < c * L) if HAS_STARTS else valid_r
    vecBeta = tl.where(seen, tl.exp((row_hi + tl.load(Ms + state)) + row_lo), 0.0)
    return valid_r, state, vecInvN, row_hi, row_lo, first_r, vecBeta


@triton.jit
def _state_tile_of_C(Cs, state, offs_k, offs_v, DQK: tl.constexpr, DV: tl.constexpr):
    """Rows offs_k and columns offs_v of the stored state C number `state` (0 outside DQK × DV)."""
    return tl.load(Cs + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                   mask=(offs_k < DQK)[:, None] & (offs_v < DV)[None, :], other=0.0)


@triton.jit
def _row_dots(A, B, t_a, t_b, S, D: tl.constexpr, BLQ: tl.constexpr, BD: tl.constexpr, DOT_DTYPE: tl.constexpr,
              PRECISION: tl.constexpr):
    """A_a·B_b for BLQ rows a of A and BLQ rows b of B, both (S, D), summed over D in tiles of BD (rows past S
    read as 0): (BLQ, BLQ) float32."""
    valid_a, valid_b = t_a < S, t_b < S
    acc = tl.full((BLQ, BLQ), 0.0, tl.float32)
    for dd in range((D + BD - 1) // BD):
        offs_d = dd * BD + tl.arange(0, BD)
        mask_d = offs_d < D
        matA = tl.load(A + t_a[:, None] * D + offs_d[None, :], mask=valid_a[:, None] & mask_d[None, :], other=0.0)
        matB = tl.load(B + t_b[:, None] * D + offs_d[None, :], mask=valid_b[:, None] & mask_d[None, :], other=0.0)
        acc += _dot(matA, tl.trans(matB), DOT_DTYPE, PRECISION)
    return acc


@triton.jit
def _dnum_v(dH, V, vecInvN, t_r, t_s, S, DV: tl.constexpr, BLQ: tl.constexpr, BV: tl.constexpr,
            DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, TRANSPOSE: tl.constexpr = False):
    """dnum_r·v_s = (dh_r·v_s) / N_r, (BLQ rows r, BLQ columns s), formed the one way every backward kernel
    forms it: the same float32 values everywhere, which δ_r cancels exactly (see `den_grad_kernel`)."""
    if TRANSPOSE:
        return _row_dots(V, dH, t_s, t_r, S, DV, BLQ, BV, DOT_DTYPE, PRECISION) * vecInvN[None, :]
    return _row_dots(dH, V, t_r, t_s, S, DV, BLQ, BV, DOT_DTYPE, PRECISION) * vecInvN[:, None]


@triton.jit
def _delta(Delta, t, S):
    """δ_t as its two float32 parts (hi, lo) from den_grad_kernel (0 past S)."""
    return tl.load(Delta + t, mask=t < S, other=0.0), tl.load(Delta + S + t, mask=t < S, other=0.0)


@triton.jit
def _scores(Q, K, Parts, row_hi, row_lo, t_r, t_s, first_r, S, scale, DQK: tl.constexpr, BLQ: tl.constexpr,
            BK: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr):
    """S_rs = D'_rs q̂_r·k_s, (BLQ rows r, BLQ columns s)."""
    matP = _row_dots(Q, K, t_r, t_s, S, DQK, BLQ, BK, DOT_DTYPE, PRECISION)
    col_hi, col_lo = _column_parts(Parts, t_s, S)
    return matP * scale * _decay(row_hi, row_lo, col_hi, col_lo, t_r, t_s, S, False, first_r, HAS_STARTS)


@triton.jit
def den_grad_kernel(
    Q, K, V, dH,  # (BH, S, DQK), (BH, S, DQK), (BH, S, DV), (BH, S, DV)
    Mr, Den,  # (BH, S) from chunk_outputs_kernel
    InvN, Parts,  # (BH, S), (BH, 4, S) from row_scales_kernel
    Cs, Ns, Ms,  # from chunk_states_kernel
    Delta,  # out: (BH, 2, S) δ_r as two float32 parts, hi and lo
    Rrow,  # out: (BH, S) float64 R_r = Σ_s G_rs + β_r ∂L/∂β_r (below)
    Gcol,  # out: (BH, L / BLQ, S) float64 per block of BLQ rows, the column sums Σ_r G_rs of its pair terms
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLQ: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·NC·(L / BLQ),), rows r of a chunk: the gradient of den_r (the normalizer's, as m is detached)

        δ_r = -sign(den_r) dnum_r·num_r / (|den_r| + eps) where |den_r| > exp(-m_r) (as the forward chose), else 0,
        β_r ∂L/∂β_r = β_r dnum_r·(q̂_rᵀC_prev) + δ_r β_r q̂_r·n_prev,

    with den_r = Σ_s S_rs + β_r q̂_r·n_prev and dnum_r·num_r = Σ_s S_rs (dnum_r·v_s) + β_r dnum_r·(q̂_rᵀC_prev)
    summed in float64 from float32 products, S_rs = D'_rs q̂_r·k_s. Then, for the gate gradients, the pair
    terms G_rs = S_rs (dnum_r·v_s + δ_r) = S_rs ∂L/∂S_rs, summed over the columns s of each row (R_r, with
    the state's term) and over the rows of this block for each column (Gcol), both from the same float32
    tile and in float64: a large pair term inside a chunk then cancels exactly between its row's and its
    column's sums in the gradient of the log forget gate (`grad_gates_kernel`).

    Where one pair (r, s) outweighs the rest of row r, h_r = v_s up to eps, and the gradient of S_rs is the
    eps-sized residual dnum_r·v_s + δ_r of two terms near dnum_r·v_s (so are those of q, k and ĩ). With δ_r
    from float32 h and den it carried their rounding (dĩ 3.8e-2 off at S 1, docs/benchmarks.md). Here
    dnum_r·v_s comes from `_dnum_v`, the same float32 values the gradient kernels add δ_r to, and δ_r is
    stored as two float32 parts they add one after the other: the pair's term cancels exactly. So does the
    state's term in β_r ∂L/∂β_r where the state outweighs the pairs."""
    bh, c, jq, t_r, _ = _rows(1, NC, L, BLQ)
    Q, K, V, dH, Parts = Q + bh * S * DQK, K + bh * S * DQK, V + bh * S * DV, dH + bh * S * DV, Parts + bh * 4 * S
    valid_r, state, vecInvN, row_hi, row_lo, first_r, vecBeta = _rows_after_state(InvN, Parts, First, Ms, bh, c,
                                                                                   t_r, S, NC, L, HAS_STARTS)
    # the state's parts: q̂_r·n_prev and dnum_r·(q̂_rᵀC_prev), times β_r
    vecNumState = tl.full((BLQ,), 0.0, tl.float32)
    for vv in range((DV + BV - 1) // BV):
        offs_v = vv * BV + tl.arange(0, BV)
        mask_v = offs_v < DV
        matQC = tl.full((BLQ, BV), 0.0, tl.float32)
        for kk in range((DQK + BK - 1) // BK):
            offs_k = kk * BK + tl.arange(0, BK)
            mask_k = offs_k < DQK
            matQ = tl.load(Q + t_r[:, None] * DQK + offs_k[None, :], mask=valid_r[:, None] & mask_k[None, :], other=0.0)
            matC = _state_tile_of_C(Cs, state, offs_k, offs_v, DQK, DV)
            matQC += _dot(matQ, matC, DOT_DTYPE, PRECISION)
        matdH = tl.load(dH + t_r[:, None] * DV + offs_v[None, :], mask=valid_r[:, None] & mask_v[None, :], other=0.0)
        vecNumState += tl.reduce(matQC * matdH.to(tl.float32), 1, _ADD)
    vecDenState = tl.full((BLQ,), 0.0, tl.float32)
    for kk in range((DQK + BK - 1) // BK):
        offs_k = kk * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        matQ = tl.load(Q + t_r[:, None] * DQK + offs_k[None, :], mask=valid_r[:, None] & mask_k[None, :], other=0.0)
        vecN = tl.load(Ns + state * DQK + offs_k, mask=mask_k, other=0.0)
        vecDenState += tl.reduce(matQ.to(tl.float32) * vecN[None, :], 1, _ADD)
    vecNumState *= scale * vecBeta * vecInvN
    vecDenState *= scale * vecBeta
    # the pairs inside the chunk, in float64
    vecDen = vecDenState.to(tl.float64)
    vecDnumNum = vecNumState.to(tl.float64)
    for js in range(jq + 1):
        t_s = c * L + js * BLQ + tl.arange(0, BLQ)
        matS = _scores(Q, K, Parts, row_hi, row_lo, t_r, t_s, first_r, S, scale, DQK, BLQ, BK, DOT_DTYPE, PRECISION,
                       HAS_STARTS).to(tl.float64)
        matDS = _dnum_v(dH, V, vecInvN, t_r, t_s, S, DV, BLQ, BV, DOT_DTYPE, PRECISION).to(tl.float64)
        vecDen += tl.reduce(matS, 1, _ADD)
        vecDnumNum += tl.reduce(matS * matDS, 1, _ADD)
    above = tl.abs(tl.load(Den + bh * S + t_r, mask=valid_r, other=0.0)) > tl.exp(
        -tl.load(Mr + bh * S + t_r, mask=valid_r, other=0.0))
    sign = tl.where(vecDen >= 0, 1.0, -1.0)
    vecDelta = tl.where(above, -vecDnumNum * sign / (tl.abs(vecDen) + eps), 0.0)
    delta_hi, delta_lo = _split(vecDelta)
    Delta += bh * 2 * S
    tl.store(Delta + t_r, delta_hi, mask=valid_r)
    tl.store(Delta + S + t_r, delta_lo, mask=valid_r)
    # the pair terms, from the tiles of the first pass made again, as the gradient kernels make them
    vecR = vecNumState.to(tl.float64) + vecDelta * vecDenState.to(tl.float64)
    for js in range(jq + 1):
        t_s = c * L + js * BLQ + tl.arange(0, BLQ)
        matS = _scores(Q, K, Parts, row_hi, row_lo, t_r, t_s, first_r, S, scale, DQK, BLQ, BK, DOT_DTYPE, PRECISION,
                       HAS_STARTS)
        matDS = _dnum_v(dH, V, vecInvN, t_r, t_s, S, DV, BLQ, BV, DOT_DTYPE, PRECISION)
        matG = (matS * ((matDS + delta_hi[:, None]) + delta_lo[:, None])).to(tl.float64)
        vecR += tl.reduce(matG, 1, _ADD)
        tl.store(Gcol + (bh * (L // BLQ) + jq) * S + t_s, tl.reduce(matG, 0, _ADD), mask=t_s < S)
    tl.store(Rrow + bh * S + t_r, vecR, mask=valid_r)


@triton.jit
def state_grads_kernel(
    Q, dH,  # (BH, S, DQK), (BH, S, DV)
    InvN, Parts, Delta,  # (BH, S), (BH, 4, S) from row_scales_kernel, (BH, 2, S) from den_grad_kernel
    Bv, Cs, Ns, Ms,  # from chunk_states_kernel
    dCS, dNS,  # (BH, DQK, DV), (BH, DQK) gradient of the final state
    dCs, dNs,  # out: (BH, NC + 1, DQK, DV), (BH, NC + 1, DQK): gradient of the state before chunk c
    Y,  # out: (BH, NT, NC) this program's tile's part of Y_c = decay_c (Σ C_c ⊙ dC_{c+1} + Σ n_c ⊙ dn_{c+1})
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLC: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·cdiv(DQK, BK)·cdiv(DV, BV),), chunks in reverse:
    dC_prev = exp(g + m_prev - m_next) dC_next + Σ_r β_r q̂_r (dh_r / N_r)ᵀ,  dn_prev alike with δ_r."""
    NT: tl.constexpr = ((DQK + BK - 1) // BK) * ((DV + BV - 1) // BV)
    bh, pk, pv = _state_tile(DQK, DV, BK, BV)
    Y += (bh * NT + tl.program_id(0) % NT) * NC
    Cs, Ns = Cs + bh * (NC + 1) * DQK * DV, Ns + bh * (NC + 1) * DQK
    offs_k = pk * BK + tl.arange(0, BK)
    offs_v = pv * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tile_kv = offs_k[:, None] * DV + offs_v[None, :]
    Q, dH, Bv, Ms = Q + bh * S * DQK, dH + bh * S * DV, Bv + bh * NC * L, Ms + bh * (NC + 1)
    InvN, Delta, Parts = InvN + bh * S, Delta + bh * 2 * S, Parts + bh * 4 * S
    dCs, dNs = dCs + bh * (NC + 1) * DQK * DV, dNs + bh * (NC + 1) * DQK
    First += bh * NC * L

    matdC = tl.load(dCS + bh * DQK * DV + tile_kv, mask=mask_kv, other=0.0)  # (BK, BV)
    vecdN = tl.load(dNS + bh * DQK + offs_k, mask=mask_k, other=0.0)  # (BK,)
    for cc in range(NC):
        c = NC - 1 - cc
        tl.store(dCs + (c + 1) * DQK * DV + tile_kv, matdC, mask=mask_kv)
        tl.store(dNs + (c + 1) * DQK + offs_k, vecdN, mask=mask_k & (pv == 0))
        scaM = tl.load(Ms + c)
        scaDecay = _exp64(tl.load(Bv + c * L + L - 1) + scaM.to(tl.float64) - tl.load(Ms + c + 1).to(tl.float64))
        if HAS_STARTS:  # a chunk that holds a start drops the state before it
            scaDecay = tl.where(tl.load(First + c * L + L - 1) >= c * L, 0.0, scaDecay)
        matdC = scaDecay * matdC
        vecdN = scaDecay * vecdN
        matC = tl.load(Cs + c * DQK * DV + tile_kv, mask=mask_kv, other=0.0)
        vecN = tl.load(Ns + c * DQK + offs_k, mask=mask_k & (pv == 0), other=0.0)
        tl.store(Y + c, tl.reduce(tl.reduce(matC * matdC, 1, _ADD), 0, _ADD) + tl.reduce(vecN * vecdN, 0, _ADD))
        for j in range(L // BLC):
            t = c * L + j * BLC + tl.arange(0, BLC)
            valid = t < S
            row_hi, row_lo = _row_parts(Parts, t, S)
            if HAS_STARTS:  # rows past a start in the chunk do not see the state before it
                valid = valid & (tl.load(First + t) < c * L)
            vecBeta = tl.where(valid, tl.exp((row_hi + scaM) + row_lo), 0.0) * scale
            matQ = tl.load(Q + t[:, None] * DQK + offs_k[None, :], mask=valid[:, None] & mask_k[None, :], other=0.0)
            matdH = tl.load(dH + t[:, None] * DV + offs_v[None, :], mask=valid[:, None] & mask_v[None, :], other=0.0)
            vecInvN = tl.load(InvN + t, mask=valid, other=0.0)
            matQb = matQ.to(tl.float32) * vecBeta[:, None]  # (BLC, BK)
            matdC += _dot(tl.trans(matQb), matdH.to(tl.float32) * vecInvN[:, None], DOT_DTYPE, PRECISION)
            vecdN += tl.reduce(matQb * tl.load(Delta + t, mask=valid, other=0.0)[:, None], 0, _ADD)
    tl.store(dCs + tile_kv, matdC, mask=mask_kv)
    tl.store(dNs + offs_k, vecdN, mask=mask_k & (pv == 0))


@triton.jit
def grad_q_kernel(
    Q, K, V, dH,  # (BH, S, DQK), (BH, S, DQK), (BH, S, DV), (BH, S, DV)
    InvN, Parts, Delta,  # (BH, S), (BH, 4, S) from row_scales_kernel, (BH, 2, S) from den_grad_kernel
    Cs, Ns, Ms,  # from chunk_states_kernel
    dQ,  # out: (BH, S, DQK) in the dtype of Q
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLQ: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·NC·(L / BLQ)·cdiv(DQK, BK),), rows r of a chunk:
    dq̂_r = β_r (C_prev dnum_r + δ_r n_prev) + Σ_s D'_rs (dnum_r·v_s + δ_r) k_s,  dnum_r = dh_r / N_r."""
    bh, c, jq, t_r, pk = _rows((DQK + BK - 1) // BK, NC, L, BLQ)
    offs_k = pk * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    K, V, dH, Parts = K + bh * S * DQK, V + bh * S * DV, dH + bh * S * DV, Parts + bh * 4 * S
    valid_r, state, vecInvN, row_hi, row_lo, first_r, vecBeta = _rows_after_state(InvN, Parts, First, Ms, bh, c,
                                                                                   t_r, S, NC, L, HAS_STARTS)
    delta_hi, delta_lo = _delta(Delta + bh * 2 * S, t_r, S)
    acc = tl.full((BLQ, BK), 0.0, tl.float32)
    for vv in range((DV + BV - 1) // BV):
        offs_v = vv * BV + tl.arange(0, BV)
        mask_v = offs_v < DV
        matdH = tl.load(dH + t_r[:, None] * DV + offs_v[None, :], mask=valid_r[:, None] & mask_v[None, :], other=0.0)
        matC = _state_tile_of_C(Cs, state, offs_k, offs_v, DQK, DV)
        acc += _dot(matdH, tl.trans(matC), DOT_DTYPE, PRECISION)
    vecN = tl.load(Ns + state * DQK + offs_k, mask=mask_k, other=0.0)
    acc = (acc * vecInvN[:, None] + delta_hi[:, None] * vecN[None, :]) * vecBeta[:, None]
    for js in range(jq + 1):
        t_s = c * L + js * BLQ + tl.arange(0, BLQ)
        valid_s = t_s < S
        matDS = _dnum_v(dH, V, vecInvN, t_r, t_s, S, DV, BLQ, BV, DOT_DTYPE, PRECISION)
        col_hi, col_lo = _column_parts(Parts, t_s, S)
        matdS = ((matDS + delta_hi[:, None]) + delta_lo[:, None]) * _decay(row_hi, row_lo, col_hi, col_lo, t_r, t_s,
                                                                           S, False, first_r, HAS_STARTS)  # (BLQ, BLQ)
        matK = tl.load(K + t_s[:, None] * DQK + offs_k[None, :], mask=valid_s[:, None] & mask_k[None, :], other=0.0)
        acc += _dot(matdS, matK, DOT_DTYPE, PRECISION)
    acc *= scale
    tl.store(dQ + bh * S * DQK + t_r[:, None] * DQK + offs_k[None, :], acc.to(dQ.dtype.element_ty),
             mask=valid_r[:, None] & mask_k[None, :])


@triton.jit
def _next_state_weights(Parts, Bv, Ms, First, bh, c, t_s, S, NC, L: tl.constexpr, HAS_STARTS: tl.constexpr):
    """e_s = exp(a_s - m_next) = exp((ĩ_s - b_s) + (b_L - m_next)): the weight of step s of chunk c in the
    state after it (0 past S, and outside the chunk's last document), from the split column parts."""
    col_hi, col_lo = _column_parts(Parts, t_s, S)
    g_hi, g_lo = _split(tl.load(Bv + c * L + L - 1) - tl.load(Ms + bh * (NC + 1) + c + 1).to(tl.float64))
    weights = tl.exp((col_hi + g_hi) + (col_lo + g_lo))
    if HAS_STARTS:
        First += bh * NC * L
        weights = tl.where(tl.load(First + t_s) == tl.load(First + c * L + L - 1), weights, 0.0)
    return weights


@triton.jit
def grad_k_kernel(
    Q, K, V, dH,  # (BH, S, DQK), (BH, S, DQK), (BH, S, DV), (BH, S, DV)
    InvN, Parts, Delta,  # (BH, S), (BH, 4, S) from row_scales_kernel, (BH, 2, S) from den_grad_kernel
    Bv, Ms, dCs, dNs,  # from chunk_states_kernel and state_grads_kernel
    dK,  # out: (BH, S, DQK) in the dtype of K
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLQ: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·NC·(L / BLQ)·cdiv(DQK, BK),), columns s of a chunk:
    dk_s = e_s (dC_next v_s + dn_next) + Σ_{r≥s} D'_rs (dnum_r·v_s + δ_r) q̂_r."""
    bh, c, js, t_s, pk = _rows((DQK + BK - 1) // BK, NC, L, BLQ)
    offs_k = pk * BK + tl.arange(0, BK)
    mask_k = offs_k < DQK
    valid_s = t_s < S
    Q, V, dH, Bv, Parts = Q + bh * S * DQK, V + bh * S * DV, dH + bh * S * DV, Bv + bh * NC * L, Parts + bh * 4 * S
    state = bh * (NC + 1) + c + 1
    acc = tl.full((BLQ, BK), 0.0, tl.float32)
    for vv in range((DV + BV - 1) // BV):
        offs_v = vv * BV + tl.arange(0, BV)
        mask_v = offs_v < DV
        matV = tl.load(V + t_s[:, None] * DV + offs_v[None, :], mask=valid_s[:, None] & mask_v[None, :], other=0.0)
        matdC = tl.load(dCs + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                        mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        acc += _dot(matV, tl.trans(matdC), DOT_DTYPE, PRECISION)
    vecdN = tl.load(dNs + state * DQK + offs_k, mask=mask_k, other=0.0)
    acc = (acc + vecdN[None, :]) * _next_state_weights(Parts, Bv, Ms, First, bh, c, t_s, S, NC, L, HAS_STARTS)[:, None]
    col_hi, col_lo = _column_parts(Parts, t_s, S)
    for jr in range(js, L // BLQ):
        t_r = c * L + jr * BLQ + tl.arange(0, BLQ)
        valid_r = t_r < S
        vecInvN = tl.load(InvN + bh * S + t_r, mask=valid_r, other=0.0)
        delta_hi, delta_lo = _delta(Delta + bh * 2 * S, t_r, S)
        matDSt = _dnum_v(dH, V, vecInvN, t_r, t_s, S, DV, BLQ, BV, DOT_DTYPE, PRECISION, True)  # (s, r)
        row_hi, row_lo = _row_parts(Parts, t_r, S)
        first_r = _row_firsts(First, bh, NC, t_r, L, HAS_STARTS)
        matdSt = ((matDSt + delta_hi[None, :]) + delta_lo[None, :]) * scale * _decay(row_hi, row_lo, col_hi, col_lo,
                                                                                     t_r, t_s, S, True, first_r,
                                                                                     HAS_STARTS)
        matQ = tl.load(Q + t_r[:, None] * DQK + offs_k[None, :], mask=valid_r[:, None] & mask_k[None, :], other=0.0)
        acc += _dot(matdSt, matQ, DOT_DTYPE, PRECISION)
    tl.store(dK + bh * S * DQK + t_s[:, None] * DQK + offs_k[None, :], acc.to(dK.dtype.element_ty),
             mask=valid_s[:, None] & mask_k[None, :])


@triton.jit
def grad_v_kernel(
    Q, K, V, dH,  # (BH, S, DQK), (BH, S, DQK), (BH, S, DV), (BH, S, DV)
    InvN, Parts,  # (BH, S), (BH, 4, S) from row_scales_kernel
    Bv, Ms, dCs, dNs,  # from chunk_states_kernel and state_grads_kernel
    dV,  # out: (BH, S, DV) in the dtype of dV's activation (V)
    E,  # out: (BH, cdiv(DV, BV), S) this program's DV columns' part of E_s (below)
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, scale,
    DQK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BLQ: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH·NC·(L / BLQ)·cdiv(DV, BV),), columns s of a chunk:
    dv_s = Σ_{r≥s} D'_rs (q̂_r·k_s) dnum_r + e_s dC_nextᵀ k_s, and for the gate gradients

        E_s = e_s (k_s·(dC_next v_s) + k_s·dn_next) = v_s·dv_s^state + e_s k_s·dn_next,

    the gradient of step s's log weight in the next state (k_s·dk_s = G_s + E_s, G_s from
    den_grad_kernel), summed on its own: as v_s·dv_s minus the intra part it carried the rounding of that
    part. The first DV tile adds the dn term. On a GPU the keys weighted by e_s are rounded to bf16 for
    the product, as chunk_states_kernel rounds its weighted keys."""
    NVB: tl.constexpr = (DV + BV - 1) // BV
    bh, c, js, t_s, pv = _rows(NVB, NC, L, BLQ)
    offs_v = pv * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    valid_s = t_s < S
    Q, K, V, dH = Q + bh * S * DQK, K + bh * S * DQK, V + bh * S * DV, dH + bh * S * DV
    Bv, Parts = Bv + bh * NC * L, Parts + bh * 4 * S
    state = bh * (NC + 1) + c + 1
    tile_sv = t_s[:, None] * DV + offs_v[None, :]
    mask_sv = valid_s[:, None] & mask_v[None, :]
    # the state's part first, E_s on its own: e_s dC_nextᵀ k_s and e_s k_s·dn_next
    vecE = _next_state_weights(Parts, Bv, Ms, First, bh, c, t_s, S, NC, L, HAS_STARTS)
    acc = tl.full((BLQ, BV), 0.0, tl.float32)
    vecKdN = tl.full((BLQ,), 0.0, tl.float32)
    for kk in range((DQK + BK - 1) // BK):
        offs_k = kk * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        matKe = tl.load(K + t_s[:, None] * DQK + offs_k[None, :], mask=valid_s[:, None] & mask_k[None, :],
                        other=0.0).to(tl.float32) * vecE[:, None]
        matdC = tl.load(dCs + state * DQK * DV + offs_k[:, None] * DV + offs_v[None, :],
                        mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        acc += _dot(matKe, matdC, DOT_DTYPE, PRECISION)
        vecKdN += tl.reduce(matKe * tl.load(dNs + state * DQK + offs_k, mask=mask_k, other=0.0)[None, :], 1, _ADD)
    vecState = tl.reduce(tl.load(V + tile_sv, mask=mask_sv, other=0.0).to(tl.float32) * acc, 1, _ADD)
    tl.store(E + (bh * NVB + pv) * S + t_s, vecState + tl.where(pv == 0, vecKdN, 0.0), mask=valid_s)
    col_hi, col_lo = _column_parts(Parts, t_s, S)
    for jr in range(js, L // BLQ):
        t_r = c * L + jr * BLQ + tl.arange(0, BLQ)
        valid_r = t_r < S
        matPt = _row_dots(K, Q, t_s, t_r, S, DQK, BLQ, BK, DOT_DTYPE, PRECISION)  # (s, r)
        row_hi, row_lo = _row_parts(Parts, t_r, S)
        first_r = _row_firsts(First, bh, NC, t_r, L, HAS_STARTS)
        matSt = matPt * scale * _decay(row_hi, row_lo, col_hi, col_lo, t_r, t_s, S, True, first_r, HAS_STARTS)
        vecInvN = tl.load(InvN + bh * S + t_r, mask=valid_r, other=0.0)
        matdH = tl.load(dH + t_r[:, None] * DV + offs_v[None, :], mask=valid_r[:, None] & mask_v[None, :], other=0.0)
        acc += _dot(matSt * vecInvN[None, :], matdH, DOT_DTYPE, PRECISION)
    tl.store(dV + bh * S * DV + tile_sv, acc.to(dV.dtype.element_ty), mask=mask_sv)


@triton.jit
def _tile_sum(X, bh, NB, S, t, valid):
    """Σ over the NB tiles of per-step partial sums X (BH, NB, S) at steps t, in float64."""
    total = tl.where(valid, 0.0, 0.0).to(tl.float64)
    for kk in range(NB):
        total += tl.load(X + (bh * NB + kk) * S + t, mask=valid, other=0.0).to(tl.float64)
    return total


@triton.jit
def grad_gates_kernel(
    Rrow, Gcol,  # (BH, S), (BH, L / BLQ, S) float64 from den_grad_kernel
    E,  # (BH, NVB, S) from grad_v_kernel
    Y,  # (BH, NT, NC) from state_grads_kernel
    F,  # (BH, S)
    dI, dF,  # out: (BH, S) fp32
    First,  # (BH, NC·L) int32 with HAS_STARTS
    S, NC, NVB, NT,
    L: tl.constexpr, BLQ: tl.constexpr, HAS_STARTS: tl.constexpr,
):
    """Grid (BH, NC), the L steps of one chunk c:  dĩ_t = k_t·dk_t = G_t + E_t  and

        df̃_t = σ(-f̃_t) (Σ_{u≥t in c} (R_u - G_u) + Y_c + Σ_{s<t in c} E_s),   R_u = Σ_s G_us + β_u ∂L/∂β_u,

    the gradient of the log forget gate at t: pairs (row r ≥ t, column s < t) inside the chunk (R_u sums
    row u's pairs and the state before the chunk, G_u column u's pairs), the state before the chunk as
    the next state sees it (Y_c) and the steps before t as the next state sees them (E_s). It equals
    DESIGN.md §4's closed form Σ_{u≥t} (q_u·dq_u - k_u·dk_u) + Σ C_S ⊙ dC_S + Σ n_S ⊙ dn_S, without the
    terms that cancel in that form: where one step dominates the next state, its E_s and the later
    chunks' sums are large and cancel, and their float32 rounding put df̃ at 4.8e-2 on one of 60 random
    draws at extreme gates with a state (now 5.5e-3; docs/benchmarks.md). Likewise a large pair term
    inside the suffix enters R_u and G_u as the same float32 number (den_grad_kernel), so it cancels exactly
    (with R_u = q_u·dq_u in closed form it cancelled only to the rounding of G_u: df̃ up to 7x the native
    form's error at L 256). Sums in float64. With documents both sums run within t's document (segmented
    scans); Y_c is 0 where the chunk holds a start."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    t = c * L + tl.arange(0, L)
    valid = t < S
    vecG = tl.where(valid, 0.0, 0.0).to(tl.float64)
    for jr in range(L // BLQ):  # the column sums of the blocks of rows r >= t
        vecG += tl.load(Gcol + (bh * (L // BLQ) + jr) * S + t, mask=valid & (jr >= (t - c * L) // BLQ), other=0.0)
    vecE = _tile_sum(E, bh, NVB, S, t, valid)
    tl.store(dI + bh * S + t, (vecG + vecE).to(tl.float32), mask=valid)
    earlier = valid & (t > c * L)
    vecRow = tl.load(Rrow + bh * S + t, mask=valid, other=0.0) - vecG
    if HAS_STARTS:
        First += bh * NC * L
        start = tl.load(First + t) == t
        last = (t == c * L + L - 1) | (tl.load(First + t + 1, mask=t < c * L + L - 1, other=0) == t + 1)
        vecBefore, _ = tl.associative_scan(  # Σ_{s<t in c and t's document} E_s
            (_tile_sum(E, bh, NVB, S, t - 1, earlier & ~start), start.to(tl.int32)), 0, _segment_add)
        vecAfter, _ = tl.associative_scan((vecRow, last.to(tl.int32)), 0, _segment_add, reverse=True)
    else:
        vecBefore = tl.associative_scan(_tile_sum(E, bh, NVB, S, t - 1, earlier), 0, _ADD)  # Σ_{s<t in c} E_s
        vecAfter = tl.associative_scan(vecRow, 0, _ADD, reverse=True)
    scaY = tl.full((), 0.0, tl.float64)
    for kk in range(NT):
        scaY += tl.load(Y + (bh * NT + kk) * NC + c).to(tl.float64)
    fgate = tl.load(F + bh * S + t, mask=valid, other=0.0).to(tl.float32)
    tl.store(dF + bh * S + t, (vecAfter + scaY + vecBefore).to(tl.float32) / (1.0 + tl.exp(fgate)), mask=valid)


@triton.jit
def step_kernel(
    Q, K, V, I, F,  # (BH, DQK), (BH, DQK), (BH, DV), (BH,), (BH,)
    C0, N0, M0,  # (BH, DQK, DV), (BH, DQK), (BH,)
    H, C1, N1, M1,  # out: (BH, DV) and the new state
    scale, eps,
    DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (BH, cdiv(DV, BV)); BK >= DQK: one recurrent step (DESIGN.md §4) on a (DQK, BV) tile of C."""
    bh = tl.program_id(0).to(tl.int64)
    pv = tl.program_id(1)
    offs_k = tl.arange(0, BK)
    offs_v = pv * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DQK, offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tile_kv = bh * DQK * DV + offs_k[:, None] * DV + offs_v[None, :]
    vecQ = tl.load(Q + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    vecK = tl.load(K + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    vecV = tl.load(V + bh * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    igate = tl.load(I + bh).to(tl.float32)
    logf = _logsigmoid(tl.load(F + bh).to(tl.float32))
    scaM = tl.load(M0 + bh)
    scaMnew = tl.maximum(logf + scaM, igate)
    scaDecay = tl.exp(logf + scaM - scaMnew)
    scaGain = tl.exp(igate - scaMnew)
    matC = scaDecay * tl.load(C0 + tile_kv, mask=mask_kv, other=0.0) + scaGain * vecK[:, None] * vecV[None, :]
    vecN = scaDecay * tl.load(N0 + bh * DQK + offs_k, mask=mask_k, other=0.0) + scaGain * vecK
    vecNum = tl.reduce(vecQ[:, None] * matC, 0, _ADD) * scale  # (BV,)
    scaDen = tl.reduce(vecQ * vecN, 0, _ADD) * scale
    vecH = vecNum / (tl.maximum(tl.abs(scaDen), tl.exp(-scaMnew)) + eps)
    tl.store(H + bh * DV + offs_v, vecH.to(H.dtype.element_ty), mask=mask_v)
    tl.store(C1 + tile_kv, matC, mask=mask_kv)
    tl.store(N1 + bh * DQK + offs_k, vecN, mask=mask_k & (pv == 0))
    tl.store(M1 + bh, scaMnew, mask=pv == 0)
