"""sLSTM kernels: the backend registry and the dispatcher (DESIGN.md §5, §8).

Every backend has the signature of `slstm_native`:
    (gates_x, R, b, state) -> (y, final state)
and receives inputs already checked, with a full initial state: R, b and the state in the compute dtype,
gates_x in its own dtype (a kernel computes in the compute dtype; the triton one reads bf16 activations
as they are and multiplies them in bf16).

Notation:
    B batch, S sequence length, NH heads, DH head dim; gates in the order (i, f, z, o);
    state (y, c, n, m) each (B, NH, DH).
"""

import logging
from functools import cache

import torch

from .._dispatch import compute_dtype, select_backend
from .native import SLSTMState, check_weights, prepare_state, slstm_native, slstm_step
from .triton import slstm_triton, unsupported

SLSTM_BACKENDS = {"native": slstm_native, "triton": slstm_triton}

log = logging.getLogger(__name__)


@cache
def _report_native_on_gpu(reason: str) -> None:
    """Say once per reason why `auto` runs the PyTorch loop on a GPU."""
    log.info("sLSTM backend auto: the Triton kernels cannot run (%s); using the native PyTorch loop", reason)


def _auto_backend(gates_x: torch.Tensor) -> str:
    """triton for CUDA inputs the Triton kernels take (all but float64), else native."""
    if not gates_x.is_cuda:
        return "native"
    if reason := unsupported(gates_x):
        _report_native_on_gpu(reason)
        return "native"
    return "triton"


def slstm(
    gates_x: torch.Tensor,  # (B, S, 4, NH, DH)
    R: torch.Tensor,  # (4, NH, DH, DH)
    b: torch.Tensor,  # (4, NH, DH)
    state: SLSTMState | None = None,
    *,
    backend: str = "auto",
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SLSTMState]:
    """sLSTM cell over a sequence.

    Args:
        gates_x: (B, S, 4, NH, DH) input-side gate pre-activations, order (i, f, z, o).
        R: (4, NH, DH, DH) block-diagonal recurrent weights: gate g of head h adds y_{t-1}[h] @ R[g, h].
        b: (4, NH, DH) gate biases.
        state: initial (y, c, n, m) each (B, NH, DH); None for a fresh state (y = c = n = 0, m = -inf).
            m carries no gradient.
        backend: a key of SLSTM_BACKENDS, or "auto": triton for CUDA tensors (float64 ones excepted), else
            native.
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
    kernel = select_backend(SLSTM_BACKENDS, _auto_backend(gates_x) if backend == "auto" else backend, auto="native")
    B, S, _, NH, DH = gates_x.shape
    if S < 1:
        raise ValueError("the sequence is empty (S = 0)")
    check_weights(R, b, NH, DH)
    dtype = compute_dtype(gates_x.dtype)
    state = prepare_state(state, (B, NH, DH), dtype, gates_x.device)
    # the Triton kernel takes bf16/fp16 gate inputs as they are (bf16 recurrent products, fp32 accumulation)
    keeps_dtype = kernel is slstm_triton and gates_x.dtype in (torch.bfloat16, torch.float16)
    y, state = kernel(gates_x if keeps_dtype else gates_x.to(dtype), R.to(dtype), b.to(dtype), state)
    y = y.to(gates_x.dtype)
    return (y, state) if return_state else y


__all__ = ["SLSTM_BACKENDS", "SLSTMState", "slstm", "slstm_step"]
