"""mLSTM kernels: the backend registry and the dispatcher (DESIGN.md §4, §8).

Every backend has the signature of `mlstm_reference`:
    (q, k, v, i, f, state, *, doc_starts, chunk_size, eps) -> (h, final state)
and receives inputs already checked and cast to the compute dtype, with a full initial state.
doc_starts (B, S) bool or None marks the first token of each packed document: the state before that
token is replaced by a fresh one (C = 0, n = 0, m = 0), exactly as if the document ran alone.

Notation:
    B batch, NH heads, S sequence length, DQK key/query head dim, DV value head dim;
    ĩ, f̃ gate pre-activations; state (C, n, m) as in `stabilized`.
"""

import torch

from ..backends import Backend, BackendChoice, check_shape, compute_dtype
from .chunkwise import mlstm_chunkwise
from .recurrent import mlstm_recurrent, mlstm_recurrent_step
from .reference import mlstm_reference
from .stabilized import MLSTMState, prepare_state
from .triton import mlstm_triton, mlstm_triton_step

_LOW_PRECISION = frozenset({torch.float16, torch.bfloat16, torch.float32})
MLSTM_BACKENDS = {
    "reference": Backend("reference", "the quadratic parallel form, a test reference", mlstm_reference,
                         mlstm_recurrent_step),
    "recurrent": Backend("recurrent", "a step loop, a test reference", mlstm_recurrent, mlstm_recurrent_step),
    "native": Backend("native", "chunkwise PyTorch", mlstm_chunkwise, mlstm_recurrent_step),
    "triton": Backend("triton", "fused chunkwise Triton kernels", mlstm_triton, mlstm_triton_step,
                      devices=frozenset({"cuda"}), dtypes=_LOW_PRECISION, as_is=frozenset({torch.bfloat16})),
}


def mlstm_backend(backend: str | BackendChoice = "auto") -> BackendChoice:
    """A backend name resolved for every input: `auto` is triton for CUDA inputs in float32, bfloat16 or
    float16, native elsewhere (float64, the CPU). A choice passes through (models resolve theirs once)."""
    if isinstance(backend, BackendChoice):
        return backend
    return BackendChoice("mLSTM", MLSTM_BACKENDS, backend, preference=("triton", "native"))


def mlstm(
    q: torch.Tensor,  # (B, NH, S, DQK)
    k: torch.Tensor,  # (B, NH, S, DQK)
    v: torch.Tensor,  # (B, NH, S, DV)
    i: torch.Tensor,  # (B, NH, S)
    f: torch.Tensor,  # (B, NH, S)
    state: MLSTMState | None = None,
    *,
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
    backend: str | BackendChoice = "auto",
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
        doc_starts: (B, S) bool, True at the first token of a packed document, or None: there the state
            (the initial one included, at t = 0) is dropped for a fresh one, so every document's outputs,
            gradients and the final state equal those of the document run alone from zero.
        backend: a key of MLSTM_BACKENDS, "auto" (see `mlstm_backend`), or a resolved BackendChoice.
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
    kernel = mlstm_backend(backend).for_input(v)
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, NH, S, DQK), got {tuple(q.shape)}")
    B, NH, S, DQK = q.shape
    DV = v.shape[-1]
    check_shape("k", k, (B, NH, S, DQK), "(B, NH, S, DQK)")
    check_shape("v", v, (B, NH, S, DV), "(B, NH, S, DV)")
    check_shape("i", i, (B, NH, S), "(B, NH, S)")
    check_shape("f", f, (B, NH, S), "(B, NH, S)")
    if doc_starts is not None:
        check_shape("doc_starts", doc_starts, (B, S), "(B, S)")
        doc_starts = doc_starts.to(device=q.device, dtype=torch.bool)
    if S < 1:
        raise ValueError("the sequence is empty (S = 0)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = compute_dtype(v.dtype)
    state = prepare_state(state, (B, NH, DQK, DV), dtype, q.device)
    h, state = kernel.sequence(*_cast(kernel, dtype, q, k, v, i, f), state, doc_starts=doc_starts,
                               chunk_size=chunk_size, eps=eps)
    h = h.to(v.dtype)
    return (h, state) if return_state else h


def mlstm_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState | None,
    *,
    backend: str | BackendChoice = "auto",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """One mLSTM time step, for generation: the chosen backend's step function (no autograd in triton's).

    Args:
        q, k: (B, NH, DQK) one token's queries (unscaled) and keys; v: (B, NH, DV); i, f: (B, NH) gates.
        state: (C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)), or None for zeros.
        backend: as in `mlstm`.
        eps: added to the normalizer.

    Returns:
        h (B, NH, DV) in the dtype of v, and the new state in float32 (float64 for float64 inputs).

    Raises:
        ValueError: mismatched shapes, unknown backend.
    """
    kernel = mlstm_backend(backend).for_input(v)
    h, state = kernel.step(*_cast(kernel, compute_dtype(v.dtype), q, k, v, i, f), state, eps=eps)
    return h.to(v.dtype), state


def _cast(kernel: Backend, dtype: torch.dtype, q, k, v, i, f) -> list[torch.Tensor]:
    """q, k, v as the kernel reads them (as they are, or in the compute dtype); the gates in the compute dtype."""
    activation_dtype = v.dtype if v.dtype in kernel.as_is else dtype
    return [x.to(activation_dtype) for x in (q, k, v)] + [x.to(dtype) for x in (i, f)]


__all__ = ["MLSTM_BACKENDS", "MLSTMState", "mlstm", "mlstm_backend", "mlstm_step"]
