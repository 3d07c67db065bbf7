"""mLSTM kernels: the backend registry and the dispatcher (DESIGN.md §4, §8).

Every backend has the signature of `mlstm_reference`:
    (q, k, v, i, f, state, *, chunk_size, eps) -> (h, final state)
and receives inputs already checked and cast to the compute dtype, with a full initial state.

Notation:
    B batch, NH heads, S sequence length, DQK key/query head dim, DV value head dim;
    ĩ, f̃ gate pre-activations; state (C, n, m) as in `stabilized`.
"""

import torch

from .._dispatch import check_shape, compute_dtype, select_backend
from .chunkwise import mlstm_chunkwise
from .recurrent import mlstm_recurrent, mlstm_step
from .reference import mlstm_reference
from .stabilized import MLSTMState, prepare_state
from .triton import mlstm_triton, mlstm_triton_step

MLSTM_BACKENDS = {
    "reference": mlstm_reference, "recurrent": mlstm_recurrent, "native": mlstm_chunkwise, "triton": mlstm_triton
}


def mlstm(
    q: torch.Tensor,  # (B, NH, S, DQK)
    k: torch.Tensor,  # (B, NH, S, DQK)
    v: torch.Tensor,  # (B, NH, S, DV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    state: MLSTMState | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = 64,
    return_state: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """mLSTM cell over a sequence.

    Args:
        q, k: (B, NH, S, DQK) queries (unscaled: the kernel applies DQK^(-1/2)) and keys.
        v: (B, NH, S, DV) values.
        i, f: (B, NH, S) input and forget gate pre-activations.
        state: initial (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)); None for zeros (m = 0).
            m carries no gradient.
        backend: a key of MLSTM_BACKENDS, or "auto": "triton" for CUDA tensors (float64 ones excepted),
            "native" elsewhere.
        chunk_size: chunk length of the chunkwise backends (native; triton: a power of two >= 16).
        return_state: also return the final state.
        eps: added to the normalizer.

    Returns:
        h (B, NH, S, DV) in the dtype of v; with return_state, (h, (C, n, m)). The computation and the
        states are float32, or float64 for float64 inputs.

    Raises:
        ValueError: unknown backend, mismatched shapes, empty sequence or chunk_size < 1.
        RuntimeError: backend "triton" on CPU tensors without TRITON_INTERPRET=1.
    """
    on_gpu = q.is_cuda and q.dtype != torch.float64
    kernel = select_backend(MLSTM_BACKENDS, backend, auto="triton" if on_gpu else "native")
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, NH, S, DQK), got {tuple(q.shape)}")
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    check_shape("k", k, (B, NH, S, DQK), "(B, NH, S, DQK)")
    check_shape("v", v, (B, NH, S, DV), "(B, NH, S, DV)")
    check_shape("i", i, (B, NH, S), "(B, NH, S)")
    check_shape("f", f, (B, NH, S), "(B, NH, S)")
    if S < 1:
        raise ValueError("the sequence is empty (S = 0)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = compute_dtype(v.dtype)
    state = prepare_state(state, (B, NH, DQK, DV), dtype, q.device)
    # the Triton kernels take bf16 activations as they are (bf16 matrix products, float32 accumulation)
    activation_dtype = v.dtype if kernel is mlstm_triton and v.dtype == torch.bfloat16 else dtype
    inputs = [x.to(activation_dtype) for x in (q, k, v)] + [x.to(dtype) for x in (i, f)]
    if kernel is mlstm_triton and S == 1 and not torch.is_grad_enabled():  # generation: the step kernel
        h, state = mlstm_triton_step(*(x[:, :, 0] for x in inputs), state, eps=eps)
        h = h[:, :, None]
    else:
        h, state = kernel(*inputs, state, chunk_size=chunk_size, eps=eps)
    h = h.to(v.dtype)
    return (h, state) if return_state else h


__all__ = ["MLSTM_BACKENDS", "MLSTMState", "mlstm", "mlstm_step"]
