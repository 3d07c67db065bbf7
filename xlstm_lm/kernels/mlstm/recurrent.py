"""mLSTM stabilized recurrent form: one step (generation), and a step loop as a backend (DESIGN.md §4).

    m_t = max(logσ(f̃_t) + m_{t-1}, ĩ_t)
    C_t = exp(logσ(f̃_t) + m_{t-1} - m_t) C_{t-1} + exp(ĩ_t - m_t) k_t v_tᵀ,   n_t alike with k_t
    h_t = q̂_tᵀ C_t / (max(|q̂_tᵀ n_t|, exp(-m_t)) + eps)

Notation:
    B batch, NH heads, S sequence length, DQK key/query head dim, DV value head dim;
    ĩ, f̃ gate pre-activations; q̂ = q · DQK^(-1/2); state (C, n, m) as in `stabilized`.
"""

import torch
import torch.nn.functional as F

from ..backends import compute_dtype
from .stabilized import (MLSTMState, check_step_shapes, drop_state_at, normalized_output, prepare_state,
                         stabilized_update)


def _step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState, eps: float
) -> tuple[torch.Tensor, MLSTMState]:
    """One step on inputs already in the compute dtype; shapes as in `mlstm_step`."""
    state = stabilized_update(state, F.logsigmoid(f), k[..., :, None] * v[..., None, :], k, i)
    matC, vecN, scaM = state
    vecQs = q * q.shape[-1] ** -0.5  # (B, NH, DQK)
    h = normalized_output((vecQs[..., None, :] @ matC).squeeze(-2), (vecQs * vecN).sum(-1), scaM, eps)
    return h, state


def mlstm_recurrent_step(
    q: torch.Tensor,  # (B, NH, DQK)
    k: torch.Tensor,  # (B, NH, DQK)
    v: torch.Tensor,  # (B, NH, DV)
    i: torch.Tensor,  # (B, NH)
    f: torch.Tensor,  # (B, NH)
    state: MLSTMState | None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """One mLSTM time step in PyTorch: the step of the native and reference backends.

    Args:
        q, k: (B, NH, DQK) one token's queries and keys (q unscaled).
        v: (B, NH, DV) values.
        i, f: (B, NH) input and forget gate pre-activations.
        state: (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)), or None for zeros.
        eps: added to the normalizer.

    Returns:
        h (B, NH, DV) in the dtype of v, and the new state in float32 (float64 for float64 inputs).

    Raises:
        ValueError: mismatched shapes.
    """
    B, NH, DQK, DV = check_step_shapes(q, k, v, i, f)
    dtype = compute_dtype(v.dtype)
    state = prepare_state(state, (B, NH, DQK, DV), dtype, q.device)
    h, state = _step(q.to(dtype), k.to(dtype), v.to(dtype), i.to(dtype), f.to(dtype), state, eps)
    return h.to(v.dtype), state


def mlstm_recurrent(
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
    """mLSTM over a sequence, one step at a time (slow; a second opinion for tests).

    Args:
        q, k, v, i, f: as in `xlstm_lm.kernels.mlstm.mlstm`, already in the compute dtype.
        state: initial (C, n, m).
        doc_starts: (B, S) bool or None: the state is dropped for a fresh one before each document start.
        chunk_size: unused (one signature for every backend).
        eps: added to the normalizer.

    Returns:
        h (B, NH, S, DV) and the final state.
    """
    outputs = []
    starts = [None] * q.shape[2] if doc_starts is None else doc_starts.unbind(1)
    # unbind, not indexing: its backward stacks the gradients once instead of once per step
    for q_t, k_t, v_t, i_t, f_t, starts_t in zip(*(x.unbind(2) for x in (q, k, v, i, f)), starts):
        if starts_t is not None:
            state = drop_state_at(state, starts_t)
        h, state = _step(q_t, k_t, v_t, i_t, f_t, state, eps)
        outputs.append(h)
    return torch.stack(outputs, dim=2), state
