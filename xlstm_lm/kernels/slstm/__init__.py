"""sLSTM kernels: the backend registry and the dispatcher (DESIGN.md §5, §8).

Every backend has the signature of `slstm_native`:
    (gates_x, R, b, state, doc_starts) -> (y, final state)
and receives inputs already checked, with a full initial state: R, b and the state in the compute dtype,
gates_x in its own dtype (a kernel computes in the compute dtype; the triton one reads bf16 activations
as they are and multiplies them in bf16). doc_starts (B, S) bool or None marks the first token of each
packed document: the state before it is replaced by a fresh one (y = c = n = 0, m = -inf), so R y_{t-1}
sees zeros there, exactly as if the document ran alone.

Notation:
    B batch, S sequence length, NH heads, DH head dim; gates in the order (i, f, z, o);
    state (y, c, n, m) each (B, NH, DH).
"""

import torch

from ..backends import Backend, BackendChoice, check_shape, compute_dtype
from .native import SLSTMState, check_weights, prepare_state, slstm_native, slstm_native_step
from .triton import slstm_triton

SLSTM_BACKENDS = {
    "native": Backend("native", "a PyTorch step loop with a hand-written backward", slstm_native, slstm_native_step),
    # one step is a few small products: the PyTorch step serves generation on every device
    "triton": Backend("triton", "fused Triton kernels, one launch per sequence", slstm_triton, slstm_native_step,
                      devices=frozenset({"cuda"}), dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
                      as_is=frozenset({torch.float16, torch.bfloat16})),
}


def slstm_backend(backend: str | BackendChoice = "auto") -> BackendChoice:
    """A backend name resolved for every input: `auto` is triton for CUDA inputs in float32, bfloat16 or
    float16, native elsewhere (float64, the CPU). A choice passes through (models resolve theirs once)."""
    if isinstance(backend, BackendChoice):
        return backend
    return BackendChoice("sLSTM", SLSTM_BACKENDS, backend, preference=("triton", "native"))


def slstm(
    gates_x: torch.Tensor,  # (B, S, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState | None = None,
    *,
    doc_starts: torch.Tensor | None = None,  # (B, S) bool
    backend: str | BackendChoice = "auto",
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SLSTMState]:
    """sLSTM cell over a sequence.

    Args:
        gates_x: (B, S, 4, NH, DH) input-side gate pre-activations, order (i, f, z, o).
        R: (4, NH, DH, DH) block-diagonal recurrent weights: gate g of head h adds y_{t-1}[h] @ R[g, h].
        b: (4, NH, DH) gate biases.
        state: initial (y, c, n, m) each (B, NH, DH); None for a fresh state (y = c = n = 0, m = -inf).
            m carries no gradient.
        doc_starts: (B, S) bool, True at the first token of a packed document, or None: there the state
            (the initial one included, at t = 0) is dropped for a fresh one, so every document's outputs,
            gradients and the final state equal those of the document run alone from a fresh state.
        backend: a key of SLSTM_BACKENDS, "auto" (see `slstm_backend`), or a resolved BackendChoice.
        return_state: also return the final state.

    Returns:
        y (B, S, NH, DH) in the dtype of gates_x; with return_state, (y, (y, c, n, m)). The computation
        and the states are float32, or float64 for float64 inputs.

    Raises:
        ValueError: unknown backend, mismatched shapes or an empty sequence (and, for triton, float64).
        RuntimeError: backend="triton" on CPU tensors without the Triton interpreter.
    """
    if gates_x.dim() != 5 or gates_x.shape[2] != 4:
        raise ValueError(f"gates_x must have shape (B, S, 4, NH, DH), got {tuple(gates_x.shape)}")
    kernel = slstm_backend(backend).for_input(gates_x)
    B, S, _, NH, DH = gates_x.shape
    if S < 1:
        raise ValueError("the sequence is empty (S = 0)")
    check_weights(R, b, NH, DH)
    if doc_starts is not None:
        check_shape("doc_starts", doc_starts, (B, S), "(B, S)")
        doc_starts = doc_starts.to(device=gates_x.device, dtype=torch.bool)
    dtype = compute_dtype(gates_x.dtype)
    state = prepare_state(state, (B, NH, DH), dtype, gates_x.device)
    gates = gates_x if gates_x.dtype in kernel.as_is else gates_x.to(dtype)
    y, state = kernel.sequence(gates, R.to(dtype), b.to(dtype), state, doc_starts)
    y = y.to(gates_x.dtype)
    return (y, state) if return_state else y


def slstm_step(
    gates_x_t: torch.Tensor,  # (B, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState | None,
    *,
    backend: str | BackendChoice = "auto",
) -> tuple[torch.Tensor, SLSTMState]:
    """One sLSTM time step, for generation: the chosen backend's step function.

    Args:
        gates_x_t: (B, 4, NH, DH) input-side gate pre-activations of one token, order (i, f, z, o).
        R: (4, NH, DH, DH) recurrent weights, b: (4, NH, DH) biases.
        state: (y, c, n, m) each (B, NH, DH), or None for a fresh state.
        backend: as in `slstm`.

    Returns:
        y (B, NH, DH) in the dtype of gates_x_t, and the new state in float32 (float64 for float64 inputs).

    Raises:
        ValueError: mismatched shapes, unknown backend.
    """
    return slstm_backend(backend).for_input(gates_x_t).step(gates_x_t, R, b, state)


__all__ = ["SLSTM_BACKENDS", "SLSTMState", "slstm", "slstm_backend", "slstm_step"]
