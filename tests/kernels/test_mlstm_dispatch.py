"""The mLSTM dispatcher (DESIGN.md §8): backend names, shape checks, dtypes, the stabilizer's gradient."""

import pytest
import torch

from tests.kernels.conftest import DEVICE
from xlstm_lm.kernels import MLSTM_BACKENDS, mlstm, mlstm_step

B, NH, S, DQK, DV = 2, 3, 10, 8, 12


def inputs(dtype=torch.float32):
    shapes = ((B, NH, S, DQK), (B, NH, S, DQK), (B, NH, S, DV), (B, NH, S), (B, NH, S))
    return tuple(torch.randn(shape, dtype=dtype, device=DEVICE) for shape in shapes)


def state():
    return (torch.randn(B, NH, DQK, DV, device=DEVICE), torch.randn(B, NH, DQK, device=DEVICE),
            torch.zeros(B, NH, device=DEVICE))


def test_unknown_backend_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'cuda_magic'") as error:
        mlstm(*inputs(), backend="cuda_magic")
    assert str(sorted(MLSTM_BACKENDS)) in str(error.value) and "'auto'" in str(error.value)


def test_auto_picks_triton_on_cuda_and_native_elsewhere():
    q, k, v, i, f = inputs()
    expected = "triton" if q.is_cuda else "native"
    assert torch.equal(mlstm(q, k, v, i, f), mlstm(q, k, v, i, f, backend=expected))


@pytest.mark.parametrize(
    "position, shape, message",
    [(0, (B, NH, S), "q must have shape"), (1, (B, NH, S, DQK + 1), "k must have shape"),
     (2, (B, NH, S + 1, DV), "v must have shape"), (3, (B, NH, S, 1), "i must have shape"),
     (4, (B, NH + 1, S), "f must have shape")],
)
def test_input_shape_mismatch(position, shape, message):
    args = list(inputs())
    args[position] = torch.randn(shape, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        mlstm(*args)


@pytest.mark.parametrize(
    "position, shape, message",
    [(0, (B, NH, DV, DQK), r"state C must have shape \(B, NH, DQK, DV\)"), (1, (B, NH, DV), "state n"),
     (2, (B, NH, 1), "state m")],
)
def test_state_shape_mismatch(position, shape, message):
    initial = list(state())
    initial[position] = torch.randn(shape, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        mlstm(*inputs(), tuple(initial))


def test_state_must_be_a_triple():
    with pytest.raises(ValueError, match=r"tuple \(C, n, m\)"):
        mlstm(*inputs(), state()[:2])


@pytest.mark.parametrize("chunk_size", [0, -4])
def test_chunk_size_must_be_positive(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(*inputs(), chunk_size=chunk_size)


def test_empty_sequence_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        mlstm(*(x[:, :, :0] for x in inputs()))


def test_step_shape_mismatch():
    q, k, v, i, f = (x[:, :, 0] for x in inputs())
    with pytest.raises(ValueError, match="v must have shape"):
        mlstm_step(q, k, v[:, :1], i, f, None)
    with pytest.raises(ValueError, match="q must have shape"):
        mlstm_step(q[..., None], k, v, i, f, None)


@pytest.mark.parametrize("backend, dtype", [
    (backend, dtype) for backend in sorted(MLSTM_BACKENDS)
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    if (backend, dtype) != ("triton", torch.float64)  # refused: test_mlstm_triton.py
])
def test_dtypes(backend, dtype):
    # h follows v; states are float32 whatever the activation dtype, float64 only for float64 inputs.
    h, (C, n, m) = mlstm(*inputs(dtype), state(), backend=backend, chunk_size=4, return_state=True)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert h.dtype == dtype and h.shape == (B, NH, S, DV)
    assert C.dtype == n.dtype == m.dtype == state_dtype
    assert (C.shape, n.shape, m.shape) == ((B, NH, DQK, DV), (B, NH, DQK), (B, NH))


@pytest.mark.parametrize("backend", sorted(MLSTM_BACKENDS))
def test_stabilizer_has_no_gradient(backend):
    q, k, v, i, f = (x.requires_grad_(True) for x in inputs())
    C, n, m = (x.requires_grad_(True) for x in state())
    h, (_, _, m_final) = mlstm(q, k, v, i, f, (C, n, m), backend=backend, chunk_size=4, return_state=True)
    assert not m_final.requires_grad
    h.sum().backward()
    assert m.grad is None and q.grad is not None and C.grad is not None
