"""mLSTM native chunkwise form in PyTorch (DESIGN.md §4, "Chunkwise form").

The states between chunks come from a sequential loop over chunks (cheap: one scaled add per chunk, the
chunks' own contributions are computed for all chunks in one batched matmul); the outputs inside every
chunk then come from the parallel form, for all chunks at once. A sequence whose length is not a multiple
of the chunk length ends with one shorter chunk (same math, no padding). Gradients come from autograd.

Notation:
    B batch, NH heads, S sequence length, L chunk length, NC number of chunks,
    DQK key/query head dim, DV value head dim; ĩ, f̃ gate pre-activations; state (C, n, m) as in
    `stabilized`; b_L = Σ_{r≤L} logσ(f̃_r) the log decay over a whole chunk.
"""

import torch

from .stabilized import MLSTMState, chunk_inputs, log_decay_matrix, parallel_outputs, stabilized_update


def _equal_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState,
    L: int,
    eps: float,
) -> tuple[torch.Tensor, MLSTMState]:
    """Chunkwise form of a sequence whose length S is a multiple of L; shapes as in `mlstm_chunkwise`."""
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    NC = S // L
    matQ = q.reshape(B, NH, NC, L, DQK)
    matK = k.reshape(B, NH, NC, L, DQK)
    matV = v.reshape(B, NH, NC, L, DV)
    matLogD, vecB = log_decay_matrix(i.reshape(B, NH, NC, L), f.reshape(B, NH, NC, L))  # (B, NH, NC, L, L)
    matCin, vecNin, scaLogI = chunk_inputs(matK, matV, matLogD[..., -1, :])  # (B, NH, NC, ...)
    states_before = []
    # unbind, not indexing: its backward stacks the gradients once instead of once per chunk
    for update in zip(*(x.unbind(2) for x in (vecB[..., -1], matCin, vecNin, scaLogI))):
        states_before.append(state)
        state = stabilized_update(state, *update)
    chunk_states = tuple(torch.stack(parts, dim=2) for parts in zip(*states_before))  # (B, NH, NC, ...)
    h = parallel_outputs(matQ, matK, matV, matLogD, vecB, chunk_states, eps)  # (B, NH, NC, L, DV)
    return h.reshape(B, NH, S, DV), state


def mlstm_chunkwise(
    q: torch.Tensor,  # (B, NH, S, DQK)
    k: torch.Tensor,  # (B, NH, S, DQK)
    v: torch.Tensor,  # (B, NH, S, DV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    state: MLSTMState,
    *,
    chunk_size: int,
    eps: float,
) -> tuple[torch.Tensor, MLSTMState]:
    """mLSTM over a sequence of any length in the chunkwise form.

    Args:
        q, k, v, i, f: as in `xlstm_lm.kernels.mlstm.mlstm`, already in the compute dtype.
        state: initial (C, n, m).
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
            h, state = _equal_chunks(*inputs, state, L, eps)
            outputs.append(h)
    return torch.cat(outputs, dim=2), state
