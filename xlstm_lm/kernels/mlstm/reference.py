"""mLSTM stable parallel form: the test oracle (DESIGN.md §4, "Parallel form").

The whole sequence is one chunk of the chunkwise form: the output of every step comes from the initial
state and the stable forget matrix (quadratic in S), and the final state is the state after that chunk.
Run it in float64 to compare the fast backends against.

Notation:
    B batch, NH heads, S sequence length, DQK key/query head dim, DV value head dim;
    ĩ, f̃ gate pre-activations; state (C, n, m) as in `stabilized`.
"""

import torch

from .stabilized import MLSTMState, chunk_inputs, drop_state_at, log_decay_matrix, parallel_outputs, stabilized_update


def mlstm_reference(
    q: torch.Tensor,  # (B, NH, S, DQK)
    k: torch.Tensor,  # (B, NH, S, DQK)
    v: torch.Tensor,  # (B, NH, S, DV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    state: MLSTMState,  # (B, NH, DQK, DV), (B, NH, DQK), (B, NH)
    *,
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
    chunk_size: int,
    eps: float,
) -> tuple[torch.Tensor, MLSTMState]:
    """mLSTM over a sequence in the stable parallel form.

    Args:
        q, k, v, i, f: as in `xlstm_lm.kernels.mlstm.mlstm`, already in the compute dtype.
        state: initial (C, n, m).
        doc_starts: (B, S) bool or None: a fresh state before each document start.
        chunk_size: unused (one signature for every backend).
        eps: added to the normalizer.

    Returns:
        h (B, NH, S, DV) and the final state.
    """
    starts = None if doc_starts is None else doc_starts[:, None]  # (B, 1, S)
    matLogD, vecB = log_decay_matrix(i, f, starts)  # (B, NH, S, S), (B, NH, S)
    fresh = None if starts is None else starts.cumsum(-1) > 0  # rows past a document start
    h = parallel_outputs(q, k, v, matLogD, vecB, state, eps, fresh)
    if starts is not None:  # the final state grows from a fresh one if a document starts in the sequence
        state = drop_state_at(state, starts.any(-1))
    final = stabilized_update(state, vecB[..., -1], *chunk_inputs(k, v, matLogD[..., -1, :]))
    return h, final
