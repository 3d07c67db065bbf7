"""mLSTM native chunkwise form in PyTorch with a hand-written backward (DESIGN.md §4, "Chunkwise form").

Forward: the states between chunks come from a sequential loop over chunks (one scaled add per chunk; the
chunks' own contributions are one batched matmul for all chunks); the outputs inside every chunk then come
from the parallel form, for all chunks, batches and heads at once. A sequence whose length is not a
multiple of the chunk length ends with one shorter chunk (same math, no padding).

Backward (`_ChunkwiseMLSTM`): the exact gradient of that forward, normalizer included (h = num / denom,
denom = max(|den|, exp(-m)) + eps, with m detached as everywhere, DESIGN.md §4). It keeps the inputs and
the chunk-start states, and recomputes the rest per chunk: the decay matrix (element-wise) and q̂kᵀ (one
batched matmul); q̂ᵀC0 is not needed again. Autograd instead holds every (B, NH, NC, L, L) intermediate of
the forward and runs a backward node per operation and per chunk of the state loop. Per chunk, with
G = dS ⊙ S the gradient of logD (S = (q̂kᵀ) ⊙ D', dS the gradient of S):

    dĩ_s = Σ_r G_rs + E_s,   db_r = Σ_s G_rs - Σ_r' G_r'r + β_r ∂L/∂β_r,
    dlogσ(f̃_u) = Σ_{r≥u} db_r + Σ_{s<u} E_s + Y   (the cumulative sum b inside the chunk, reversed),

E_s the gradient of step s's log weight in the next state and Y that of the old state's decay (the state
path). The pair terms G_rs are summed in float64 on both sides, so a large pair inside the suffix cancels.

The state gradient flows back through the chunks in one more sequential loop (dC_{k-1} = decay_k dC_k +
the chunk's q̂ᵀ(β dnum)); the state path's gradients to k, v and the gates are batched afterwards.

Document starts (`doc_starts`): a fresh state (zeros, m = 0) replaces the state before each start, as if
the document ran alone. Inside a chunk the decay matrix is masked between documents, b restarts at each
start, rows past a start see the fresh state (β = 0, m0 = 0), and only the chunk's last document adds to
the next state, whose old part is dropped (decay 0) when the chunk holds a start. Masked entries are exact
zeros (where, never -inf arithmetic), and the backward's reversed cumulative sum of db runs within
documents, so no gradient crosses a document start, not even by rounding.

Notation:
    B batch, NH heads, S sequence length, L chunk length, NC number of chunks,
    DQK key/query head dim, DV value head dim; ĩ, f̃ gate pre-activations; state (C, n, m) as in
    `stabilized`; b_r = Σ_{u≤r} logσ(f̃_u) inside a chunk; b_L the log decay over a whole chunk;
    a_r = b_L - b_r + ĩ_r the log weight of step r in the chunk's state update.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .stabilized import MLSTMState


def _documents(starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where the documents of every chunk lie, from its document starts.

    Args:
        starts: (..., L) bool, True at the first step of a document.

    Returns:
        dict of same (..., L, L): s <= r in the same document; fresh (..., L): rows past a start in the
        chunk (they see a fresh state); last (..., L): rows of the chunk's last document; reset (...): the
        chunk holds a start; first (..., L): the index of each row's document start in the chunk (0 for the
        document that began before it).
    """
    L = starts.shape[-1]
    doc = starts.long().cumsum(-1)
    causal = torch.ones(L, L, dtype=torch.bool, device=starts.device).tril()
    steps = torch.arange(L, device=starts.device)
    first = torch.where(starts, steps, 0).cummax(-1).values
    return {"same": causal & (doc[..., :, None] == doc[..., None, :]), "fresh": doc > 0,
            "last": doc == doc[..., -1:], "reset": doc[..., -1] > 0, "first": first}


def _chunk_gates(
    vecI: torch.Tensor, vecF: torch.Tensor, docs: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cumulative log forget gates of every chunk and the log weights of the chunk's state update.

    Note: b is summed in float64 so that differences b_r - b_s stay exact (DESIGN.md §4: b_r - b_s of a
    float32 cumulative sum loses precision once |b| grows); see `_decay_matrix`. With documents, b_r sums
    from the start of row r's document, and a_r is -inf outside the chunk's last document.

    Args:
        vecI, vecF: (..., L) gate pre-activations of each chunk.
        docs: from `_documents`, or None (one document).

    Returns:
        vecB64: (..., L) b in float64, scaLogF: (...) b_L in the dtype of vecI, vecA: (..., L) a_r.
    """
    vecB64 = F.logsigmoid(vecF).double().cumsum(-1)
    if docs is not None:  # minus the sum before the row's document start
        first = docs["first"].expand(vecB64.shape)
        vecB64 = vecB64 - F.pad(vecB64, (1, 0))[..., :-1].gather(-1, first)
    vecA = (vecB64[..., -1:] - vecB64).to(vecI.dtype) + vecI
    if docs is not None:
        vecA = vecA.masked_fill(~docs["last"], float("-inf"))
    return vecB64, vecB64[..., -1].to(vecI.dtype), vecA


def _decay_matrix(
    vecB64: torch.Tensor, vecI: torch.Tensor, scaM0: torch.Tensor, docs: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row stabilizers m_r, the state's weights β_r = exp(b_r + m0 - m_r) and the stabilized decay matrix
    D'_rs = exp(b_r - b_s + ĩ_s - m_r) (0 for s > r).

    m_r = max(b_r + m0, max_{s≤r} logD_rs) = b_r + max(m0, cummax_s(ĩ_s - b_s)): a running max, no L x L
    pass. The exponent is summed in float64 from the row part b_r - m_r and the column part ĩ_s - b_s.
    With documents, D' is 0 between them and rows past a start see a fresh state: m0 = 0, β = 0 (the
    maximum over their own document is then an L x L pass).

    Args:
        vecB64: (..., L) float64 b, vecI: (..., L) input gates, scaM0: (...) stabilizer of the chunk's state.
        docs: from `_documents`, or None.

    Returns:
        vecM, vecBeta: (..., L), matDp: (..., L, L), in the dtype of vecI.
    """
    L = vecI.shape[-1]
    vecCol = vecI.double() - vecB64  # (..., L)
    scaM0 = scaM0.double()[..., None]
    if docs is None:
        mask = torch.ones(L, L, dtype=torch.bool, device=vecI.device).tril()
        vecRowMax = torch.maximum(vecCol.cummax(-1).values, scaM0)  # m_r - b_r
    else:
        mask, scaM0 = docs["same"], scaM0.masked_fill(docs["fresh"], 0.0)
        vecRowMax = torch.maximum(torch.where(mask, vecCol[..., None, :], float("-inf")).amax(-1), scaM0)
    matExponent = (vecCol[..., None, :] - vecRowMax[..., :, None]).to(vecI.dtype)  # (..., L, L)
    matDp = torch.where(mask, matExponent.exp_(), 0.0)
    vecBeta = torch.exp(scaM0 - vecRowMax)
    if docs is not None:
        vecBeta = vecBeta.masked_fill(docs["fresh"], 0.0)
    return (vecB64 + vecRowMax).to(vecI.dtype), vecBeta.to(vecI.dtype), matDp


def _intra_chunk(matQs, matK, vecB64, vecI, vecN0, scaM0, eps, docs):
    """What the forward and the backward both need of the parallel form inside every chunk, from its start
    state (`stabilized.parallel_outputs`): num = S V + β q̂ᵀC0 and h = num / denom are left to the forward.

    Args:
        matQs: (..., L, DQK) scaled queries, matK: (..., L, DQK).
        vecB64, vecI: (..., L) from `_chunk_gates` and the input gates.
        vecN0: (..., DQK), scaM0: (...) the state before each chunk.
        docs: from `_documents`, or None.

    Returns:
        dict of matS = (q̂kᵀ) ⊙ D' and matDp (..., L, L); vecM, vecBeta, vecDen, vecDenom and
        vecInterN = q̂ᵀn0 (before the β scaling), each (..., L).
    """
    vecM, vecBeta, matDp = _decay_matrix(vecB64, vecI, scaM0, docs)
    matS = (matQs @ matK.mT).mul_(matDp)
    vecInterN = (matQs @ vecN0[..., None]).squeeze(-1)
    vecDen = torch.addcmul(matS.sum(-1), vecBeta, vecInterN)
    vecDenom = torch.maximum(vecDen.abs(), torch.exp(-vecM)) + eps
    return {"matS": matS, "matDp": matDp, "vecM": vecM, "vecBeta": vecBeta, "vecDen": vecDen,
            "vecDenom": vecDenom, "vecInterN": vecInterN}


def _intra_chunk_backward(matDh, matQs, matK, matV, vecB64, vecI, matC0, vecN0, scaM0, eps, docs):
    """Gradients of the outputs inside every chunk with respect to its inputs and its start state.

    Note: Σ_v dnum_rv (q̂_rᵀC0)_v = q̂_r · (C0 dnum_r), and C0 dnum is part of dq̂ anyway, so q̂ᵀC0 is
    not recomputed. The buffers of this function are gone before the state gradients are computed.

    Args:
        matDh: (..., L, DV) the gradient of h; the rest as in `_intra_chunk` and matV
            (..., L, DV), matC0 (..., DQK, DV).

    Returns:
        dq̂, dk (..., L, DQK), dv (..., L, DV), dC0 (..., DQK, DV), dn0 (..., DQK), and dĩ, db (..., L) (db in
        float64).
    """
    intra = _intra_chunk(matQs, matK, vecB64, vecI, vecN0, scaM0, eps, docs)
    vecBeta, vecDen, matS = intra["vecBeta"], intra["vecDen"], intra["matS"]
    matDnum = (matDh / intra["vecDenom"][..., None]).contiguous()  # dh may be a strided view
    matDV = matS.mT @ matDnum
    matDS = matDnum @ matV.mT  # dnum_r·v_s, the gradient of S where den takes none
    matDnumC = matDnum.mul_(vecBeta[..., None]) @ matC0.mT  # (..., L, DQK)
    vecDnumState, vecDenState = (matDnumC * matQs).sum(-1), vecBeta * intra["vecInterN"]
    vecDden = _den_gradient(matS, matDS, vecDnumState, vecDenState, vecDen.abs() > torch.exp(-intra["vecM"]), eps)
    # h = num / denom: the normalizer's gradient goes to den where |den| is the max (m is detached); added as
    # two float32 parts, so that dnum_r·v_s + dden_r is exact where they cancel
    vecDdenHi = vecDden.to(matS.dtype)
    matDS.add_(vecDdenHi[..., None]).add_((vecDden - vecDdenHi).to(matS.dtype)[..., None])
    matG = matDS * matS  # gradient of logD (zero above the diagonal)
    matDP = matDS.mul_(intra["matDp"])  # gradient of q̂kᵀ
    vecDdenB = vecDdenHi * vecBeta
    matDQs = torch.addcmul(matDnumC.add_(matDP @ matK), vecDdenB[..., None], vecN0[..., None, :])
    matDK = matDP.mT @ matQs
    dC0 = matQs.mT @ matDnum
    dN0 = (matQs.mT @ vecDdenB[..., None]).squeeze(-1)
    vecDlogBeta = vecDnumState + vecDdenHi * vecDenState
    # every pair enters db twice, as the same float32 G_rs, summed in float64 on both sides: a pair inside a
    # suffix of the chunk (up to ~1e6 where a row's den is small) cancels exactly in the suffix sums of df̃
    vecGcol = matG.sum(-2, dtype=torch.float64)
    vecDb = matG.sum(-1, dtype=torch.float64) - vecGcol + vecDlogBeta
    return matDQs, matDK, matDV, dC0, dN0, vecGcol.to(matG.dtype), vecDb


def _den_gradient(matS, matDS, vecDnumState, vecDenState, above, eps):
    """The gradient of den, in float64.

    Where one pair (r, s) outweighs the rest of row r, h_r = v_s up to eps, and the gradient of S_rs is the
    eps-sized residual dnum_r·v_s + dden_r of two terms near dnum_r·v_s (so are those of q, k and ĩ). With
    dden from float32 h and den it carried their rounding: 10% off at S = 1 (docs/benchmarks.md). Here den_r
    and dnum_r·num_r are summed from the products in float64, so the term of pair (r, s) cancels exactly.

    Args:
        matS: (..., L, L) S, matDS: (..., L, L) dnum_r·v_s.
        vecDnumState, vecDenState: (..., L) β dnum_r·(q̂_rᵀC0) and β q̂_rᵀn0, the state's parts.
        above: (..., L) where |den_r| > exp(-m_r) (as the forward chose).

    Returns:
        vecDden: (..., L) float64, -sign(den_r) dnum_r·num_r / denom_r where |den_r| is the max, else 0.
    """
    vecDen = matS.sum(-1, dtype=torch.float64) + vecDenState.double()
    vecDnumNum = matS.to(torch.float64, copy=True).mul_(matDS).sum(-1) + vecDnumState.double()
    return torch.where(above, -vecDnumNum * vecDen.sign() / (vecDen.abs() + eps), 0.0)


def _state_weights(scaLogF, vecA, scaM, docs):
    """Per chunk k: decay_k = exp(b_L + m_{k-1} - m_k) of the old state and w_r = exp(a_r - m_k) of step r.

    Args:
        scaLogF: (..., NC) b_L, vecA: (..., NC, L) a_r; scaM: (..., NC + 1) the stabilizers before every
            chunk and after the last; docs: from `_documents` (decay 0 where a chunk holds a start), or None.

    Returns:
        vecDecay (..., NC), matW (..., NC, L).
    """
    vecDecay = torch.exp(scaLogF + scaM[..., :-1] - scaM[..., 1:])
    if docs is not None:
        vecDecay = vecDecay.masked_fill(docs["reset"], 0.0)
    return vecDecay, torch.exp(vecA - scaM[..., 1:, None])


def _state_backward(dC_final, dN_final, dC_intra, dN_intra, vecDecay, matW, matK, matV, matCs, vecNs, matDK, matDV):
    """Gradients through the states between chunks, C_k = decay_k C_{k-1} + Σ_r w_r k_r v_rᵀ (n alike).

    Args:
        dC_final (B, NH, DQK, DV), dN_final (B, NH, DQK): gradients of the final state.
        dC_intra (B, NH, NC, DQK, DV), dN_intra (B, NH, NC, DQK): what each chunk's outputs give its start state.
        vecDecay, matW: from `_state_weights`; matK, matV (B, NH, NC, L, ·); matCs, vecNs: the start states.
        matDK, matDV: (B, NH, NC, L, ·) gradients of k and v, added to in place.

    Returns:
        The gradients of the initial C and n, of log w (B, NH, NC, L) and of log decay (B, NH, NC).
    """
    dC, dN, grads_C, grads_N = dC_final, dN_final, [], []
    for scaDecay, dC_k, dN_k in zip(vecDecay.unbind(-1)[::-1], dC_intra.unbind(2)[::-1], dN_intra.unbind(2)[::-1]):
        grads_C.append(dC)
        grads_N.append(dN)
        dC = torch.addcmul(dC_k, scaDecay[..., None, None], dC)
        dN = torch.addcmul(dN_k, scaDecay[..., None], dN)
    dC_after = torch.stack(grads_C[::-1], dim=2)  # gradient of the state after each chunk
    dN_after = torch.stack(grads_N[::-1], dim=2)
    matKdC = matK @ dC_after  # (B, NH, NC, L, DV)
    vecKdN = (matK @ dN_after[..., None]).squeeze(-1)
    matDV.addcmul_(matW[..., None], matKdC)
    matDK.addcmul_(matW[..., None], (matV @ dC_after.mT).add_(dN_after[..., None, :]))
    vecDlogW = matW * ((matKdC * matV).sum(-1) + vecKdN)
    vecDlogDecay = vecDecay * ((dC_after * matCs).sum((-2, -1)) + (dN_after * vecNs).sum(-1))
    return dC, dN, vecDlogW, vecDlogDecay


class _ChunkwiseMLSTM(torch.autograd.Function):
    """Chunkwise mLSTM over a sequence whose length is a multiple of L, with the exact hand-written backward.

    Note: q, k and v are copied once into contiguous chunks: a batched matmul would otherwise copy a strided
    view (heads split off a projection) at every use.
    """

    @staticmethod
    def forward(ctx, q, k, v, i, f, matC0, vecN0, scaM0, starts, L: int, eps: float):
        B, NH, S, DQK = q.shape
        DV = v.shape[-1]
        NC = S // L
        matQs = (q.reshape(B, NH, NC, L, DQK) * DQK**-0.5).contiguous()
        matK = k.reshape(B, NH, NC, L, DQK).contiguous()
        matV = v.reshape(B, NH, NC, L, DV).contiguous()
        vecI, vecF = i.reshape(B, NH, NC, L), f.reshape(B, NH, NC, L)
        docs = None if starts is None else _documents(starts.reshape(B, 1, NC, L))
        vecB64, scaLogF, vecA = _chunk_gates(vecI, vecF, docs)
        # stabilizers first (scalars per chunk), then the states with the final weights in one batched matmul
        scaLogI, scaM = vecA.amax(-1), [scaM0]
        resets = [None] * NC if docs is None else docs["reset"].unbind(-1)
        for scaLogF_k, scaLogI_k, reset_k in zip(scaLogF.unbind(-1), scaLogI.unbind(-1), resets):
            scaM_prev = scaM[-1] if reset_k is None else scaM[-1].masked_fill(reset_k, 0.0)  # a fresh state's m
            scaM.append(torch.maximum(scaLogF_k + scaM_prev, scaLogI_k))
        scaM = torch.stack(scaM, dim=-1)  # (B, NH, NC + 1)
        vecDecay, matW = _state_weights(scaLogF, vecA, scaM, docs)
        matKw = matK * matW[..., None]
        matCin, vecNin = matKw.mT @ matV, matKw.sum(-2)  # (B, NH, NC, DQK, DV), (B, NH, NC, DQK)
        matC, vecN, states_C, states_N = matC0, vecN0, [], []
        # unbind, not indexing: one view per chunk, made once
        for scaDecay, matCin_k, vecNin_k in zip(vecDecay.unbind(-1), matCin.unbind(2), vecNin.unbind(2)):
            states_C.append(matC)
            states_N.append(vecN)
            matC = torch.addcmul(matCin_k, scaDecay[..., None, None], matC)
            vecN = torch.addcmul(vecNin_k, scaDecay[..., None], vecN)
        matCs, vecNs = torch.stack(states_C, dim=2), torch.stack(states_N, dim=2)  # state before each chunk
        intra = _intra_chunk(matQs, matK, vecB64, vecI, vecNs, scaM[..., :-1], eps, docs)
        matNum = torch.addcmul(intra["matS"] @ matV, intra["vecBeta"][..., None], matQs @ matCs)
        h = (matNum / intra["vecDenom"][..., None]).reshape(B, NH, S, DV)
        ctx.save_for_backward(matQs, matK, matV, i, f, matCs, vecNs, scaM, starts)
        ctx.L, ctx.eps = L, eps
        scaM_final = scaM[..., -1]
        ctx.mark_non_differentiable(scaM_final)
        return h, matC, vecN, scaM_final

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dC_final, dN_final, _dM_final):
        matQs, matK, matV, i, f, matCs, vecNs, scaM, starts = ctx.saved_tensors
        B, NH, NC, L, DQK = matQs.shape
        DV = matV.shape[-1]
        S = NC * L
        vecI, vecF = i.reshape(B, NH, NC, L), f.reshape(B, NH, NC, L)
        docs = None if starts is None else _documents(starts.reshape(B, 1, NC, L))
        vecB64, scaLogF, vecA = _chunk_gates(vecI, vecF, docs)
        matDQs, matDK, matDV, dC_intra, dN_intra, vecDi, vecDb = _intra_chunk_backward(
            dh.reshape(B, NH, NC, L, DV), matQs, matK, matV, vecB64, vecI, matCs, vecNs,
            scaM[..., :-1], ctx.eps, docs,
        )
        vecDecay, matW = _state_weights(scaLogF, vecA, scaM, docs)
        dC, dN, vecDlogW, vecDlogDecay = _state_backward(
            dC_final, dN_final, dC_intra, dN_intra, vecDecay, matW, matK, matV, matCs, vecNs, matDK, matDV
        )
        # a_r = b_L - b_r + ĩ_r: the weight of step r in the next state holds ĩ_r and logσ(f̃_u) for u > r
        vecDi += vecDlogW
        if docs is None:
            vecAfter = vecDb.flip(-1).cumsum(-1).flip(-1)  # b_r sums logσ(f̃_u) over u ≤ r
        else:  # ... of its own document: a masked sum, where a difference of cumulative sums would round
            vecAfter = torch.where(docs["same"], vecDb[..., :, None], 0.0).sum(-2)
        # the steps before u as the next state sees them (zero weight outside the chunk's last document), and
        # the state before the chunk (decay exp(b_L + ...), zero where the chunk holds a start): summed
        # directly, not as the chunk's total minus the rest, whose terms of a step that dominates the next
        # state are large and cancel (df̃ up to 1e4 off with that step a chunk before the rows it dominates)
        vecBefore = F.pad(vecDlogW.double().cumsum(-1)[..., :-1], (1, 0))
        vecDlogF = vecAfter + vecBefore + vecDlogDecay.double()[..., None]
        vecDf = vecDlogF.to(vecF.dtype) * torch.sigmoid(-vecF)
        dq = (matDQs * DQK**-0.5).reshape(B, NH, S, DQK)
        return (dq, matDK.reshape(B, NH, S, DQK), matDV.reshape(B, NH, S, DV), vecDi.reshape(B, NH, S),
                vecDf.reshape(B, NH, S), dC, dN, None, None, None, None)


def mlstm_chunkwise(
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
    """mLSTM over a sequence of any length in the chunkwise form.

    Args:
        q, k, v, i, f: as in `xlstm_lm.kernels.mlstm.mlstm`, already in the compute dtype.
        state: initial (C, n, m).
        doc_starts: (B, S) bool or None: a fresh state before each document start.
        chunk_size: chunk length L; the last S mod L steps form one shorter chunk.
        eps: added to the normalizer.

    Returns:
        h (B, NH, S, DV) and the final state.
    """
    S = q.shape[2]
    split = S - S % chunk_size
    outputs = []
    for start, stop, L in ((0, split, chunk_size), (split, S, S - split)):
        if stop > start:
            inputs = [x[:, :, start:stop] for x in (q, k, v, i, f)]
            starts = None if doc_starts is None else doc_starts[:, start:stop]
            h, *state = _ChunkwiseMLSTM.apply(*inputs, *state, starts, L, eps)
            outputs.append(h)
    h = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return h, tuple(state)
