"""Triton mLSTM backend: launchers, block shapes, autograd and the generation step (DESIGN.md §4, §8, §13).

The forward runs the chunkwise form in two kernels (chunk states sequentially over chunks, then the outputs
of all chunks in parallel); the backward recomputes the chunk states instead of keeping them, runs the
state gradients in reverse over chunks, then dq, dk, dv of all chunks in parallel, and the gate gradients
of all chunks from the closed form below, evaluated per chunk. The kernels are in `triton_kernels`.

Gate gradients. With m detached, ĩ_t only ever scales k_t (by exp(ĩ_t)), and b_t = Σ_{u≤t} logσ(f̃_u)
scales q_t by exp(b_t), k_t by exp(-b_t) and the final state by exp(b_S): the normalizer
max(|den|, exp(-m)) + eps and the initial state do not change that. Hence

    dĩ_t = k_t·dk_t,   df̃_t = σ(-f̃_t) (Σ_{u≥t} (q_u·dq_u - k_u·dk_u) + Σ C_S ⊙ dC_S + Σ n_S ⊙ dn_S),

DESIGN.md §4's closed form plus the last term, the gradient reaching the gates through the final state.
The kernels evaluate it chunk by chunk, rearranged as the native form is, so that the terms of other
chunks and of the next state, which cancel in it, are never summed (see `grad_gates_kernel`), and the
pair terms inside a chunk enter its row and column sums as the same float32 numbers, added in float64
(`den_grad_kernel`).

Notation:
    B batch, NH heads, BH = B·NH, S sequence length, L chunk length, NC = ceil(S / L),
    DQK key/query head dim, DV value head dim; ĩ, f̃ gate pre-activations; state (C, n, m) as in
    `stabilized`. Activations q, k, v are float32 or bfloat16; gates, states and accumulation float32,
    the cumulative log forget gates and the gate-gradient sums float64.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..backends import triton_kernels
from .stabilized import MLSTMState, check_step_shapes, prepare_state

NUM_WARPS = 4  # one warp group: Hopper HGMMA runs per warp group (8 warps miscompute dq on an H100, triton 3.6)


def _check_runnable(*tensors: torch.Tensor) -> None:
    """Raise unless Triton can run on these tensors: CUDA, or any device under TRITON_INTERPRET=1."""
    if not (all(x.is_cuda for x in tensors) or triton.knobs.runtime.interpret):
        raise RuntimeError(
            f"the triton mLSTM backend needs CUDA tensors, got {tensors[0].device} "
            "(set TRITON_INTERPRET=1 to run it in the Triton interpreter, or use backend='native')"
        )
    for x in tensors:
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the triton mLSTM backend takes float32 or bfloat16 activations, got {x.dtype} "
                             "(use backend='native' or 'reference' for float64)")


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x contiguous and at a 16-byte aligned address, copied if it is a view that starts elsewhere.

    Note: Triton compiles another variant of a kernel for unaligned pointers, whose loads are not
    vectorized and run the matrix kernels out of registers. Every tensor passed to a kernel here is
    aligned: that variant is the one tests/kernels/test_triton_aot.py checks for spills.
    """
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


@dataclass(frozen=True)
class _Blocks:
    """Block shapes and matrix-product settings of one launch (see `triton_kernels` for the names)."""

    L: int  # chunk length
    BLQ: int  # rows (and columns) of a chunk per block in the parallel kernels
    BLC: int  # steps per block in the sequential kernels
    BK: int  # DQK block in the parallel kernels
    BV: int  # DV block in the parallel kernels
    BKS: int  # DQK block of the state tile in the sequential kernels
    BVS: int  # DV block of the state tile in the sequential kernels
    dot_dtype: tl.dtype
    precision: str
    BKG: int = 128  # DQK block of the dk tile of grad_k_kernel (BK, or 64 where that would spill)
    BKR: int = 64  # DQK block that chunk_outputs_kernel and grad_v_kernel reduce over (at most BK)
    BVR: int = 64  # DV block that grad_q_kernel and grad_k_kernel reduce over (at most BV)
    BLS: int = 32  # steps per block in row_scales_kernel

    @property
    def constexprs(self) -> dict:
        return {"L": self.L, "BK": self.BK, "BV": self.BV, "DOT_DTYPE": self.dot_dtype, "PRECISION": self.precision}

    def kernel_constexprs(self, name: str) -> dict:
        """The tile constexprs of kernel `name`.

        Note: at 4 warps (255 registers a thread) these tiles compile for sm_90 without spilling (checked
        ahead of time in tests/kernels/test_triton_aot.py). The parallel kernels write accumulator tiles
        128 columns wide (all of DQK or DV up to 128), so the (rows, columns) matrices inside a chunk are
        computed once per 128 output columns, and reduce over the other head dim in blocks of 64
        (pipelined blocks of 128 spill). The exception is grad_k for a sequence length that is not a
        multiple of 16: Triton compiles that variant with element-wise masks on the per-step vectors, and
        its 128-wide tile spills, so it writes 64 columns. Every product dnum·vᵀ reduces over DV in blocks
        of BVR, in every kernel alike (`triton_kernels._dnum_v`).
        """
        values = self.constexprs
        if name in ("chunk_states_kernel", "state_grads_kernel"):
            values |= {"BK": self.BKS, "BV": self.BVS}
        elif name in ("chunk_outputs_kernel", "grad_v_kernel"):
            values |= {"BK": self.BKR}
        elif name == "den_grad_kernel":
            values |= {"BK": self.BKR, "BV": self.BVR}
        elif name == "grad_q_kernel":
            values |= {"BV": self.BVR}
        elif name == "grad_k_kernel":
            values |= {"BK": self.BKG, "BV": self.BVR}
        elif name == "row_scales_kernel":
            values = {"L": self.L, "BLS": self.BLS}
        elif name == "grad_gates_kernel":
            values = {"L": self.L, "BLQ": self.BLQ}
        return values


def _blocks(chunk_size: int, DQK: int, DV: int, dtype: torch.dtype, seq_len: int) -> _Blocks:
    """Block shapes for a chunk size, head dims and sequence length: powers of two, at least 16 (the smallest
    tl.dot). Of seq_len only whether it is a multiple of 16 matters (see `_Blocks.kernel_constexprs`).

    Note: the chunk length is chunk_size rounded up to such a power; the chunkwise form gives the same
    result for every chunk length up to rounding. bf16 activations multiply in bf16 on a GPU (HGMMA on
    Hopper); float32 ones in "tf32x3" (three tf32 products, float32 accuracy). The interpreter emulates
    bf16 badly, so it multiplies in float32.

    Raises:
        ValueError: chunk_size < 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk_size = max(16, triton.next_power_of_2(chunk_size))

    def block(dim: int, cap: int) -> int:
        return min(max(16, triton.next_power_of_2(dim)), cap)

    bf16 = dtype == torch.bfloat16 and not triton.knobs.runtime.interpret
    return _Blocks(
        L=chunk_size, BLQ=min(chunk_size, 64), BLC=min(chunk_size, 64), BK=block(DQK, 128), BV=block(DV, 128),
        BKS=block(DQK, 64), BVS=block(DV, 64), dot_dtype=tl.bfloat16 if bf16 else tl.float32, precision="tf32x3",
        BKG=block(DQK, 128 if seq_len % 16 == 0 else 64), BKR=block(DQK, 64), BVR=block(DV, 64), BLS=32,
    )


def _document_firsts(doc_starts: torch.Tensor, NH: int, L: int) -> torch.Tensor:
    """Per step of every head, the index of the document start at or before it, -1 for the document that
    continues the initial state, as the kernels take it (`triton_kernels`' note on documents).

    Args:
        doc_starts: (B, S) bool; NH heads, chunk length L.

    Returns:
        (B·NH, NC·L) int32; the steps past S repeat step S - 1's.
    """
    S = doc_starts.shape[1]
    steps = torch.arange(S, device=doc_starts.device)
    first = torch.where(doc_starts, steps, -1).cummax(-1).values.int()
    first = torch.cat([first, first[:, -1:].expand(-1, triton.cdiv(S, L) * L - S)], dim=1)
    return _aligned(first.repeat_interleave(NH, dim=0))


def _document_args(first: torch.Tensor | None, dummy: torch.Tensor) -> dict:
    """The kernels' document arguments: `First` and HAS_STARTS (a dummy pointer without documents)."""
    return {"First": dummy if first is None else first, "HAS_STARTS": first is not None}


def _chunk_states(
    k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState,
    first: torch.Tensor | None, blocks: _Blocks,
) -> tuple[torch.Tensor, ...]:
    """States before every chunk and after the last, and b inside every chunk.

    Args:
        k: (BH, S, DQK), v: (BH, S, DV), i, f: (BH, S), state (C0, n0, m0), all contiguous; first from
            `_document_firsts`, or None (one document).

    Returns:
        Cs (BH, NC + 1, DQK, DV), Ns (BH, NC + 1, DQK), Ms (BH, NC + 1) in float32, Bv (BH, NC·L) in float64.
    """
    BH, S, DQK = k.shape
    DV = v.shape[-1]
    NC = triton.cdiv(S, blocks.L)
    Cs = k.new_empty((BH, NC + 1, DQK, DV), dtype=torch.float32)
    Ns = k.new_empty((BH, NC + 1, DQK), dtype=torch.float32)
    Ms = k.new_empty((BH, NC + 1), dtype=torch.float32)
    Bv = k.new_empty((BH, NC * blocks.L), dtype=torch.float64)
    grid = (BH * triton.cdiv(DQK, blocks.BKS) * triton.cdiv(DV, blocks.BVS),)
    triton_kernels(__package__).chunk_states_kernel[grid](
        k, v, i, f, *state, Cs, Ns, Ms, Bv, S=S, NC=NC, DQK=DQK, DV=DV, BLC=blocks.BLC,
        **_document_args(first, i), **blocks.kernel_constexprs("chunk_states_kernel"), num_warps=NUM_WARPS,
    )
    return Cs, Ns, Ms, Bv


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState,
    first: torch.Tensor | None, blocks: _Blocks, eps: float,
) -> tuple[torch.Tensor, MLSTMState, torch.Tensor, torch.Tensor]:
    """Chunkwise forward on contiguous (BH, S, ·) inputs, documents as `first` (`_document_firsts`) gives them.

    Returns:
        h (BH, S, DV) in the dtype of v, the final state, and per step m_r, den_r (BH, S) for the backward.
    """
    BH, S, DQK = q.shape
    DV = v.shape[-1]
    Cs, Ns, Ms, Bv = _chunk_states(k, v, i, f, state, first, blocks)
    NC = Cs.shape[1] - 1
    h = torch.empty_like(v)
    Mr = q.new_empty((BH, S), dtype=torch.float32)
    Den = torch.empty_like(Mr)
    grid = (BH * NC * (blocks.L // blocks.BLQ) * triton.cdiv(DV, blocks.BV),)
    triton_kernels(__package__).chunk_outputs_kernel[grid](
        q, k, v, i, Bv, Cs, Ns, Ms, h, Mr, Den, S=S, NC=NC, scale=DQK**-0.5, eps=eps, DQK=DQK, DV=DV, BLQ=blocks.BLQ,
        **_document_args(first, i), **blocks.kernel_constexprs("chunk_outputs_kernel"), num_warps=NUM_WARPS,
    )
    final = (Cs[:, NC].clone(), Ns[:, NC].clone(), Ms[:, NC].clone())  # not views: Cs is freed here
    return h, final, Mr, Den


def _backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState,
    first: torch.Tensor | None, Mr: torch.Tensor, Den: torch.Tensor,
    dh: torch.Tensor, dC: torch.Tensor, dn: torch.Tensor, blocks: _Blocks, eps: float,
) -> tuple[torch.Tensor, ...]:
    """Gradients of `_forward` on contiguous (BH, S, ·) tensors.

    Args:
        q ... first: the forward inputs; Mr, Den: its per-step outputs.
        dh (BH, S, DV), dC (BH, DQK, DV), dn (BH, DQK): gradients of h and of the final C, n.

    Returns:
        dq, dk (BH, S, DQK), dv (BH, S, DV) in the dtypes of q, k, v; di, df (BH, S), dC0 (BH, DQK, DV),
        dn0 (BH, DQK) in float32.
    """
    kernels = triton_kernels(__package__)
    BH, S, DQK = q.shape
    DV = v.shape[-1]
    scale = DQK**-0.5
    Cs, Ns, Ms, Bv = _chunk_states(k, v, i, f, state, first, blocks)
    NC = Cs.shape[1] - 1
    documents = _document_args(first, i)
    InvN, parts = torch.empty_like(Mr), Mr.new_empty((BH, 4, S))
    kernels.row_scales_kernel[(BH, triton.cdiv(S, blocks.BLS))](
        i, Mr, Den, Bv, InvN, parts, S, NC, eps, **blocks.kernel_constexprs("row_scales_kernel"), num_warps=NUM_WARPS,
    )
    rows = BH * NC * (blocks.L // blocks.BLQ)
    common = {"S": S, "NC": NC, "scale": scale, "DQK": DQK, "DV": DV, "BLQ": blocks.BLQ, "num_warps": NUM_WARPS,
              **documents}
    delta = Mr.new_empty((BH, 2, S))
    Rrow = Mr.new_empty((BH, S), dtype=torch.float64)
    Gcol = Mr.new_empty((BH, blocks.L // blocks.BLQ, S), dtype=torch.float64)
    kernels.den_grad_kernel[(rows,)](
        q, k, v, dh, Mr, Den, InvN, parts, Cs, Ns, Ms, delta, Rrow, Gcol, eps=eps, **common,
        **blocks.kernel_constexprs("den_grad_kernel"),
    )
    dCs, dNs = torch.empty_like(Cs), torch.empty_like(Ns)
    NT = triton.cdiv(DQK, blocks.BKS) * triton.cdiv(DV, blocks.BVS)  # state tiles of a head
    Y = Ms.new_empty((BH, NT, NC))
    kernels.state_grads_kernel[(BH * NT,)](
        q, dh, InvN, parts, delta, Bv, Cs, Ns, Ms, dC, dn, dCs, dNs, Y, S=S, NC=NC, scale=scale, DQK=DQK, DV=DV,
        BLC=blocks.BLC, **documents, **blocks.kernel_constexprs("state_grads_kernel"), num_warps=NUM_WARPS,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    NVB = triton.cdiv(DV, blocks.BV)  # DV blocks of the dv tiles
    E = Mr.new_empty((BH, NVB, S))
    kernels.grad_q_kernel[(rows * triton.cdiv(DQK, blocks.BK),)](
        q, k, v, dh, InvN, parts, delta, Cs, Ns, Ms, dq, **common, **blocks.kernel_constexprs("grad_q_kernel"),
    )
    kernels.grad_k_kernel[(rows * triton.cdiv(DQK, blocks.BKG),)](
        q, k, v, dh, InvN, parts, delta, Bv, Ms, dCs, dNs, dk, **common, **blocks.kernel_constexprs("grad_k_kernel"),
    )
    kernels.grad_v_kernel[(rows * NVB,)](
        q, k, v, dh, InvN, parts, Bv, Ms, dCs, dNs, dv, E, **common,
        **blocks.kernel_constexprs("grad_v_kernel"),
    )
    di, df = torch.empty_like(Mr), torch.empty_like(Mr)
    kernels.grad_gates_kernel[(BH, NC)](
        Rrow, Gcol, E, Y, f, di, df, S=S, NC=NC, NVB=NVB, NT=NT, **documents,
        **blocks.kernel_constexprs("grad_gates_kernel"), num_warps=NUM_WARPS,
    )
    return dq, dk, dv, di, df, dCs[:, 0], dNs[:, 0]


class _MLSTMFunction(torch.autograd.Function):
    """(q, k, v, i, f, C0, n0, m0) on (BH, S, ·) -> (h, C_S, n_S, m_S); m gets and gives no gradient, nor do
    the documents (first, from `_document_firsts`, or None)."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, first, blocks: _Blocks, eps: float):
        h, final, Mr, Den = _forward(q, k, v, i, f, (C0, n0, m0), first, blocks, eps)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, Mr, Den)
        ctx.first, ctx.blocks, ctx.eps = first, blocks, eps
        ctx.mark_non_differentiable(final[2])
        return h, *final

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        q, k, v, i, f, C0, n0, m0, Mr, Den = ctx.saved_tensors
        dq, dk, dv, di, df, dC0, dn0 = _backward(
            q, k, v, i, f, (C0, n0, m0), ctx.first, Mr, Den, _aligned(dh), _aligned(dC), _aligned(dn),
            ctx.blocks, ctx.eps,
        )
        return dq, dk, dv, di, df, dC0, dn0, None, None, None, None


def mlstm_triton(
    q: torch.Tensor,  # (B, NH, S, DQK)
    k: torch.Tensor,  # (B, NH, S, DQK)
    v: torch.Tensor,  # (B, NH, S, DV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    state: MLSTMState,
    *,
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
    chunk_size: int,
    eps: float,
) -> tuple[torch.Tensor, MLSTMState]:
    """mLSTM over a sequence of any length with the Triton chunkwise kernels, differentiable.

    Args:
        q, k, v, i, f: as in `xlstm_lm.kernels.mlstm.mlstm`; q, k, v float32 or bfloat16.
        state: initial (C, n, m), float32.
        doc_starts: (B, S) bool or None: a fresh state before each document start, exactly, inside the
            kernels (`triton_kernels`' note on documents); None runs the kernels without any of it.
        chunk_size: chunk length L, rounded up to a power of two >= 16; S need not be a multiple of it.
        eps: added to the normalizer.

    Returns:
        h (B, NH, S, DV) in the dtype of v and the final state in float32.

    Raises:
        RuntimeError: tensors not on CUDA and TRITON_INTERPRET is not set.
        ValueError: an unsupported dtype (float64: the kernels compute in float32) or chunk size.
    """
    _check_runnable(q, k, v)
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    blocks = _blocks(chunk_size, DQK, DV, v.dtype, S)
    first = None if doc_starts is None else _document_firsts(doc_starts, NH, blocks.L)

    def flat(x):  # (B, NH, ...) -> (BH, ...)
        return _aligned(x.reshape(B * NH, *x.shape[2:]))

    inputs = [flat(x) for x in (q, k, v)] + [flat(x).float() for x in (i, f, *state)]
    h, matC, vecN, scaM = _MLSTMFunction.apply(*inputs, first, blocks, eps)
    return h.reshape(B, NH, S, DV), (matC.reshape(B, NH, DQK, DV), vecN.reshape(B, NH, DQK), scaM.reshape(B, NH))


def mlstm_triton_step(
    q: torch.Tensor,  # (B, NH, DQK)
    k: torch.Tensor,  # (B, NH, DQK)
    v: torch.Tensor,  # (B, NH, DV)
    i: torch.Tensor,  # (B, NH)
    f: torch.Tensor,  # (B, NH)
    state: MLSTMState | None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """One mLSTM time step for generation in one Triton kernel, as `mlstm_step` (no autograd).

    Args:
        q, k: (B, NH, DQK) one token's queries and keys (q unscaled); v: (B, NH, DV); i, f: (B, NH).
        state: (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)), or None for zeros.
        eps: added to the normalizer.

    Returns:
        h (B, NH, DV) in the dtype of v, and the new state in float32.

    Raises:
        RuntimeError, ValueError: as `mlstm_triton`, and for mismatched shapes.
    """
    B, NH, DQK, DV = check_step_shapes(q, k, v, i, f)
    _check_runnable(q, k, v)
    q, k, v, i, f = (_aligned(x) for x in (q, k, v, i.float(), f.float()))
    matC, vecN, scaM = (_aligned(x) for x in prepare_state(state, (B, NH, DQK, DV), torch.float32, q.device))
    h = torch.empty_like(v)
    new = (torch.empty_like(matC), torch.empty_like(vecN), torch.empty_like(scaM))
    BV = min(max(16, triton.next_power_of_2(DV)), 64)
    triton_kernels(__package__).step_kernel[(B * NH, triton.cdiv(DV, BV))](
        q, k, v, i, f, matC, vecN, scaM, h, *new, DQK**-0.5, eps,
        DQK=DQK, DV=DV, BK=max(16, triton.next_power_of_2(DQK)), BV=BV, num_warps=NUM_WARPS,
    )
    return h, new
