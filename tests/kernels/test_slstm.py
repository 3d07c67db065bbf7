"""The sLSTM kernel (DESIGN.md §5, §8, §9): the stabilized native loop against the unstabilized definition
in float64, float32 against float64 in three gate regimes, gradcheck, state passing, generation, dispatch."""

import pytest
import torch

from xlstm_lm.kernels import SLSTM_BACKENDS, slstm, slstm_step

from .conftest import GATE_REGIMES, TOLERANCES, run_slstm

STATE_M = 4  # index of the stabilizer m in (y, y_S, c_S, n_S, m_S): compared, but it has no gradient


def unstabilized_slstm(gates_x, R, b, y=None, c=None, n=None, m=None):
    """c_t = σ(f̃) c + exp(ĩ) tanh(z̃), n_t = σ(f̃) n + exp(ĩ), y_t = σ(õ) c_t / n_t, pre-activations
    gates_x_t + y_{t-1} R + b. Returns (y (B, S, NH, DH), y_S, c_S, n_S); a given state (y, c, n, m)
    stands for (y, c·e^m, n·e^m)."""
    B, S, _, NH, DH = gates_x.shape
    if y is None:
        y, c, n = (gates_x.new_zeros(B, NH, DH) for _ in range(3))
    else:
        c, n = c * m.exp(), n * m.exp()
    outputs = []
    for t in range(S):
        pre = gates_x[:, t] + torch.einsum("bhd,ghde->bghe", y, R) + b  # (B, 4, NH, DH)
        igate, fgate, zgate, ogate = pre.unbind(1)
        c = torch.sigmoid(fgate) * c + torch.exp(igate) * torch.tanh(zgate)
        n = torch.sigmoid(fgate) * n + torch.exp(igate)
        y = torch.sigmoid(ogate) * c / n
        outputs.append(y)
    return torch.stack(outputs, dim=1), y, c, n


def unstabilized_view(**inputs):
    """slstm returning (y, y_S, c_S·e^m, n_S·e^m), the unstabilized final state."""
    out, y, c, n, m = run_slstm(**inputs)
    return out, y, c * m.exp(), n * m.exp()


@pytest.mark.parametrize("regime", ["realistic", "normal"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S", [1, 9, 40])
def test_native_equals_definition(S, with_state, regime, slstm_inputs, compare_to_reference):
    # No eps in the sLSTM: the stabilizer cancels exactly, so float64 agrees to rounding, gradients too.
    inputs = slstm_inputs(B=2, S=S, NH=2, DH=4, regime=regime, with_state=with_state)
    compare_to_reference(
        unstabilized_view, unstabilized_slstm, inputs, fwd_tol=1e-11, grad_tol=1e-10, no_grad_inputs=("m",),
        dtype=torch.float64,
    )


@pytest.mark.parametrize("regime", GATE_REGIMES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S", [1, 7, 100])
def test_float32_matches_float64(S, with_state, regime, slstm_inputs, compare_to_reference):
    # The float64 reference is the same stabilized loop, checked against the definition above (moderate
    # gates) and by gradcheck; at ±30 the definition overflows, the stabilized form must not.
    inputs = slstm_inputs(B=2, S=S, NH=3, DH=8, regime=regime, with_state=with_state)
    fwd_tol, grad_tol = TOLERANCES[regime]
    compare_to_reference(
        run_slstm, run_slstm, inputs, fwd_tol=fwd_tol, grad_tol=grad_tol, no_grad_inputs=("m",),
        no_grad_outputs=(STATE_M,),
    )


@pytest.mark.parametrize("with_state", [False, True])
def test_gradcheck(with_state, slstm_inputs):
    # Finite differences move m, so the final state is checked unstabilized (c·e^m, n·e^m).
    inputs = slstm_inputs(B=1, S=3, NH=2, DH=2, regime="normal", with_state=with_state)
    names = [name for name in inputs if name != "m"]
    fixed = {"m": inputs["m"]} if with_state else {}

    def outputs(*tensors):
        return unstabilized_view(**dict(zip(names, tensors)), **fixed)

    assert torch.autograd.gradcheck(outputs, [inputs[name].requires_grad_(True) for name in names])


@pytest.mark.parametrize("regime", ["realistic", "extreme"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("pieces", [(10, 15, 5), (1, 29)])
def test_state_passing(pieces, with_state, regime, slstm_inputs):
    inputs = slstm_inputs(B=2, S=sum(pieces), NH=2, DH=4, regime=regime, with_state=with_state)
    state = tuple(inputs[name] for name in "ycnm") if with_state else None
    gates_x, R, b = inputs["gates_x"], inputs["R"], inputs["b"]
    y_full, state_full = slstm(gates_x, R, b, state, return_state=True)
    outputs = []
    for piece in torch.arange(sum(pieces)).split(pieces):
        y, state = slstm(gates_x[:, piece], R, b, state, return_state=True)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), y_full, rtol=1e-12, atol=1e-12)
    for part, part_full in zip(state, state_full, strict=True):
        torch.testing.assert_close(part, part_full, rtol=1e-12, atol=1e-12)


def test_generation_steps_equal_the_loop(slstm_inputs):
    inputs = slstm_inputs(B=2, S=12, NH=2, DH=4, regime="normal", with_state=False)
    gates_x, R, b = inputs["gates_x"], inputs["R"], inputs["b"]
    y_full, state_full = slstm(gates_x, R, b, return_state=True)
    state, outputs = None, []
    for t in range(gates_x.shape[1]):
        y, state = slstm_step(gates_x[:, t], R, b, state)
        outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, dim=1), y_full, rtol=1e-12, atol=1e-12)
    for part, part_full in zip(state, state_full, strict=True):
        torch.testing.assert_close(part, part_full, rtol=1e-12, atol=1e-12)


def test_recurrent_weight_convention():
    # pre[b, g, h, :] = gates_x[b, t, g, h, :] + y_prev[b, h, :] @ R[g, h] + b[g, h, :]: with only the o gate
    # open through R (others fixed), the second step's output gate is y_1 @ R[3, h] + b[3, h].
    B, NH, DH = 1, 2, 3
    gates_x = torch.zeros(B, 2, 4, NH, DH, dtype=torch.float64)
    gates_x[:, :, 2] = 1.0  # z: tanh(1) everywhere
    R, b = torch.zeros(4, NH, DH, DH, dtype=torch.float64), torch.zeros(4, NH, DH, dtype=torch.float64)
    R[3] = torch.randn(NH, DH, DH, dtype=torch.float64)
    b[3] = torch.randn(NH, DH, dtype=torch.float64)
    y = slstm(gates_x, R, b)
    # with i, f constant, c/n = tanh(1) at every step, so y_t = σ(õ_t) tanh(1)
    o_2 = torch.einsum("bhd,hde->bhe", y[:, 0], R[3]) + b[3]
    torch.testing.assert_close(y[:, 1], torch.sigmoid(o_2) * torch.tanh(torch.tensor(1.0, dtype=torch.float64)))


def test_dtypes_and_fresh_state():
    gates_x = torch.randn(2, 5, 4, 3, 4, dtype=torch.bfloat16)
    y, (y_S, c, n, m) = slstm(gates_x, torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4), return_state=True)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 3, 4)
    assert all(part.dtype == torch.float32 and part.shape == (2, 3, 4) for part in (y_S, c, n, m))
    assert torch.isfinite(m).all()


def test_unknown_backend_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'cuda'") as error:
        slstm(torch.randn(1, 2, 4, 1, 2), torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2), backend="cuda")
    assert str(sorted(SLSTM_BACKENDS)) in str(error.value) and "'auto'" in str(error.value)


@pytest.mark.parametrize(
    "gates_shape, R_shape, b_shape, state_shape, message",
    [((2, 5, 3, 3, 4), (4, 3, 4, 4), (4, 3, 4), None, r"gates_x(_t)? must have shape"),
     ((2, 5, 4, 3, 4), (4, 3, 4, 5), (4, 3, 4), None, "R must have shape"),
     ((2, 5, 4, 3, 4), (4, 3, 4, 4), (3, 4), None, "b must have shape"),
     ((2, 5, 4, 3, 4), (4, 3, 4, 4), (4, 3, 4), (2, 3, 5), "state y must have shape")],
)
def test_shape_mismatch(gates_shape, R_shape, b_shape, state_shape, message):
    state = None if state_shape is None else tuple(torch.randn(state_shape) for _ in range(4))
    with pytest.raises(ValueError, match=message):
        slstm(torch.randn(gates_shape), torch.randn(R_shape), torch.randn(b_shape), state)
    with pytest.raises(ValueError, match=message):
        slstm_step(torch.randn(gates_shape)[:, 0], torch.randn(R_shape), torch.randn(b_shape), state)
