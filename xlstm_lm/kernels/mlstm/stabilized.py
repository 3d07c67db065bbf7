"""The stabilized mLSTM math that every backend is built from (DESIGN.md §4).

Notation:
    B batch, NH heads, S sequence length, L chunk length, NC number of chunks,
    DQK key/query head dim, DV value head dim.
    "..." are leading batch dims: (B, NH) for a whole sequence, (B, NH, NC) for all chunks at once.
    ĩ, f̃ gate pre-activations; q̂ = q · DQK^(-1/2); b_r = Σ_{u≤r} logσ(f̃_u).
    logD_rs = Σ_{s<u≤r} logσ(f̃_u) + ĩ_s for s ≤ r, else -inf (decay from step s to step r).
    State (C, n, m): matC (..., DQK, DV), vecN (..., DQK), scaM (...); the unstabilized memory is
    C·exp(m), n·exp(m). m cancels in h up to eps, so it carries no gradient: it is always detached.
"""

import torch
import torch.nn.functional as F

from ..backends import check_shape

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def prepare_state(
    state: MLSTMState | None, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device
) -> MLSTMState:
    """Check a user state against shape = (B, NH, DQK, DV) and cast it to dtype; None gives zeros, m = 0.

    Raises:
        ValueError: a state that is not a (C, n, m) triple of the right shapes.
    """
    B, NH, DQK, DV = shape
    if state is None:
        shapes = ((B, NH, DQK, DV), (B, NH, DQK), (B, NH))
        return tuple(torch.zeros(dims, dtype=dtype, device=device) for dims in shapes)
    if len(state) != 3:
        raise ValueError(f"state must be a tuple (C, n, m), got {len(state)} tensors")
    matC, vecN, scaM = state
    check_shape("state C", matC, (B, NH, DQK, DV), "(B, NH, DQK, DV)")
    check_shape("state n", vecN, (B, NH, DQK), "(B, NH, DQK)")
    check_shape("state m", scaM, (B, NH), "(B, NH)")
    return matC.to(dtype), vecN.to(dtype), scaM.to(dtype).detach()


def drop_state_at(state: MLSTMState, starts: torch.Tensor) -> MLSTMState:
    """The state where starts is False, a fresh one (C = 0, n = 0, m = 0) where it is True.

    Args:
        state: (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)).
        starts: (B,) bool, or (B, NH).
    """
    return tuple(x.masked_fill(starts.view(*starts.shape, *([1] * (x.dim() - starts.dim()))), 0.0) for x in state)


def check_step_shapes(q, k, v, i, f) -> tuple[int, int, int, int]:
    """Validate one token's q, k (B, NH, DQK), v (B, NH, DV), i, f (B, NH); returns (B, NH, DQK, DV).

    Raises:
        ValueError: a tensor of the wrong shape, named with the expected one.
    """
    if q.dim() != 3:
        raise ValueError(f"q must have shape (B, NH, DQK), got {tuple(q.shape)}")
    B, NH, DQK = q.shape
    DV = v.shape[-1]
    check_shape("k", k, (B, NH, DQK), "(B, NH, DQK)")
    check_shape("v", v, (B, NH, DV), "(B, NH, DV)")
    check_shape("i", i, (B, NH), "(B, NH)")
    check_shape("f", f, (B, NH), "(B, NH)")
    return B, NH, DQK, DV


def normalized_output(matNum: torch.Tensor, vecDen: torch.Tensor, vecM: torch.Tensor, eps: float) -> torch.Tensor:
    """h = num / (max(|den|, exp(-m)) + eps).

    Args:
        matNum: (..., DV) stabilized numerator q̂ᵀC.
        vecDen: (...) stabilized denominator q̂ᵀn.
        vecM: (...) stabilizer of both.

    Returns:
        h: (..., DV)
    """
    return matNum / (torch.maximum(vecDen.abs(), torch.exp(-vecM)) + eps)[..., None]


def stabilized_update(
    state: MLSTMState, scaLogF: torch.Tensor, matCin: torch.Tensor, vecNin: torch.Tensor, scaLogI: torch.Tensor
) -> MLSTMState:
    """Decay the state by exp(logF) and add exp(logI)·(Cin, nin), keeping the stabilizer m:

        m' = max(logF + m, logI),   C' = exp(logF + m - m') C + exp(logI - m') Cin,   n' alike.

    One recurrent step is logF = logσ(f̃_t), (Cin, nin, logI) = (k_t v_tᵀ, k_t, ĩ_t); one chunk is
    logF = b_L and (Cin, nin, logI) from `chunk_inputs`.

    Args:
        state: (C (..., DQK, DV), n (..., DQK), m (...)).
        scaLogF: (...) log decay of the old state.
        matCin: (..., DQK, DV), vecNin: (..., DQK) input, scaled by exp(logI).
        scaLogI: (...) log scale of the input.

    Returns:
        The new state, same shapes.
    """
    matC, vecN, scaM = state
    scaMnew = torch.maximum(scaLogF + scaM, scaLogI).detach()
    scaDecay = torch.exp(scaLogF + scaM - scaMnew)
    scaGain = torch.exp(scaLogI - scaMnew)
    matC = scaDecay[..., None, None] * matC + scaGain[..., None, None] * matCin
    vecN = scaDecay[..., None] * vecN + scaGain[..., None] * vecNin
    return matC, vecN, scaMnew


def log_decay_matrix(
    vecI: torch.Tensor, vecF: torch.Tensor, doc_starts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The log decay matrix logD and the cumulative log forget gates b, within documents.

    Note: Σ_{s<u≤r} logσ(f̃_u) is a masked cumulative sum down each column (the "stable forget
    matrix"), not b_r - b_s, which loses precision once |b| grows along a long sequence. Across a document
    start logD is -inf (masked, never -inf arithmetic), and b_r sums from the start of row r's document.

    Args:
        vecI, vecF: (..., L) gate pre-activations.
        doc_starts: (..., L) bool (broadcastable), True at the first step of a document, or None.

    Returns:
        matLogD: (..., L, L), -inf above the diagonal and between documents.
        vecB: (..., L)
    """
    vecLogF = F.logsigmoid(vecF)
    L = vecLogF.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=vecF.device).tril()
    if doc_starts is not None:
        doc = doc_starts.long().cumsum(-1)
        causal = causal & (doc[..., :, None] == doc[..., None, :])  # (..., L, L)
    # row r, column s < r holds logσ(f̃_r); summing rows 1..r gives Σ_{s<u≤r} logσ(f̃_u)
    matLogF = torch.where(causal.tril(-1), vecLogF[..., :, None], 0.0).cumsum(-2)  # (..., L, L)
    matLogD = matLogF.masked_fill(~causal, float("-inf")) + vecI[..., None, :]
    return matLogD, torch.where(causal, vecLogF[..., None, :], 0.0).sum(-1)


def chunk_inputs(
    matK: torch.Tensor, matV: torch.Tensor, vecA: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a chunk adds to the state, stabilized by its own max: with a_r = logD_{L,r} = b_L - b_r + ĩ_r,

        logI = max_r a_r,   Cin = Σ_r exp(a_r - logI) k_r v_rᵀ,   nin = Σ_r exp(a_r - logI) k_r.

    Args:
        matK: (..., L, DQK), matV: (..., L, DV), vecA: (..., L) last row of logD.

    Returns:
        matCin (..., DQK, DV), vecNin (..., DQK), scaLogI (...): arguments of `stabilized_update`.
    """
    scaLogI = vecA.amax(-1).detach()
    matKw = matK * torch.exp(vecA - scaLogI[..., None])[..., None]  # (..., L, DQK)
    return matKw.mT @ matV, matKw.sum(-2), scaLogI


def parallel_outputs(
    matQ: torch.Tensor,
    matK: torch.Tensor,
    matV: torch.Tensor,
    matLogD: torch.Tensor,
    vecB: torch.Tensor,
    state: MLSTMState,
    eps: float,
    fresh: torch.Tensor | None = None,
) -> torch.Tensor:
    """Outputs of the parallel form that starts from a state (the chunkwise intra-chunk formula):

        m_r = max(b_r + m0, max_s logD_rs),   β_r = exp(b_r + m0 - m_r),   D'_rs = exp(logD_rs - m_r)
        num_r = β_r q̂_rᵀ C0 + Σ_s D'_rs (q̂_r·k_s) v_s,   den_r = β_r q̂_rᵀ n0 + Σ_s D'_rs (q̂_r·k_s)
        h_r = num_r / (max(|den_r|, exp(-m_r)) + eps)

    Args:
        matQ, matK: (..., L, DQK), matV: (..., L, DV).
        matLogD: (..., L, L), vecB: (..., L) from `log_decay_matrix`.
        state: (C0 (..., DQK, DV), n0 (..., DQK), m0 (...)) before the first row.
        fresh: (..., L) bool (broadcastable), True at rows past a document start, which see a fresh state
            (zeros, m0 = 0) in place of `state`; None for none.

    Returns:
        h: (..., L, DV)
    """
    matC0, vecN0, scaM0 = state
    matQs = matQ * matQ.shape[-1] ** -0.5
    vecM0 = scaM0[..., None] if fresh is None else scaM0[..., None].masked_fill(fresh, 0.0)
    vecBM = vecB + vecM0  # (..., L)
    vecM = torch.maximum(vecBM, matLogD.amax(-1)).detach()
    vecBeta = torch.exp(vecBM - vecM)
    if fresh is not None:
        vecBeta = vecBeta.masked_fill(fresh, 0.0)
    matS = (matQs @ matK.mT) * torch.exp(matLogD - vecM[..., None])  # (..., L, L)
    matNum = vecBeta[..., None] * (matQs @ matC0) + matS @ matV  # (..., L, DV)
    vecDen = vecBeta * (matQs @ vecN0[..., None]).squeeze(-1) + matS.sum(-1)  # (..., L)
    return normalized_output(matNum, vecDen, vecM, eps)
