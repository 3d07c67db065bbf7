"""The native sLSTM's hand-written backward through time (DESIGN.md §5, §9) against autograd through the
same stabilized step loop: equal to rounding in float64, within the float32 bounds in every gate regime."""

import pytest
import torch

from xlstm_lm.kernels.slstm.native import _cell_step, _fused_recurrent_weights, slstm_loop

from .conftest import GATE_REGIMES, TOLERANCES, run_slstm

STATE_M = 4  # index of the stabilizer m in (y, y_S, c_S, n_S, m_S): compared, but it has no gradient


def autograd_loop(gates_x, R, b, y=None, c=None, n=None, m=None):
    """The step loop with autograd recording every step; returns (y (B, S, NH, DH), y_S, c_S, n_S, m_S)."""
    B, S, _, NH, DH = gates_x.shape
    if y is None:
        y, c, n = (gates_x.new_zeros(B, NH, DH) for _ in range(3))
        m = gates_x.new_full((B, NH, DH), float("-inf"))
    state = tuple(x.transpose(0, 1) for x in (y, c, n, m.detach()))  # (NH, B, DH)
    preX = (gates_x + b).permute(1, 3, 0, 2, 4).reshape(S, NH, B, 4 * DH)
    outputs = []
    for t in range(S):
        state = _cell_step(preX[t], _fused_recurrent_weights(R), state)
        outputs.append(state[0])
    return (torch.stack(outputs, dim=1).permute(2, 1, 0, 3), *(x.transpose(0, 1) for x in state))


@pytest.mark.parametrize("regime", GATE_REGIMES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S", [1, 6, 50])
def test_float64_equals_autograd_loop(S, with_state, regime, slstm_inputs, compare_to_reference):
    inputs = slstm_inputs(B=2, S=S, NH=2, DH=4, regime=regime, with_state=with_state)
    compare_to_reference(run_slstm, autograd_loop, inputs, fwd_tol=1e-12, grad_tol=1e-10, no_grad_inputs=("m",),
                         no_grad_outputs=(STATE_M,), dtype=torch.float64)


@pytest.mark.parametrize("regime", GATE_REGIMES)
@pytest.mark.parametrize("with_state", [False, True])
def test_float32_matches_float64_autograd_loop(with_state, regime, slstm_inputs, compare_to_reference):
    inputs = slstm_inputs(B=2, S=60, NH=2, DH=16, regime=regime, with_state=with_state)
    fwd_tol, grad_tol = TOLERANCES[regime]
    compare_to_reference(run_slstm, autograd_loop, inputs, fwd_tol=fwd_tol, grad_tol=grad_tol,
                         no_grad_inputs=("m",), no_grad_outputs=(STATE_M,))


def test_final_state_gradient_alone(slstm_inputs):
    # A loss on the final state only (y unused): the carried gradients dy, dc, dn on their own.
    inputs = slstm_inputs(B=2, S=9, NH=2, DH=4, regime="normal", with_state=True)
    grads = []
    for run in (run_slstm, autograd_loop):
        leaves = {name: x.clone().requires_grad_(name != "m") for name, x in inputs.items()}
        _, y, c, n, m = run(**leaves)
        (y.square().sum() + (c * m.exp()).sum() + (n * m.exp()).square().sum()).backward()
        grads.append([x.grad for name, x in leaves.items() if name != "m"])
    for grad, expected in zip(*grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_loop_is_a_well_formed_custom_operator():
    # The loop is a custom operator so torch.compile keeps it as one node: its fake (shape) implementation,
    # schema and autograd registration must agree with the real one (torch.library.opcheck).
    generator = torch.Generator().manual_seed(0)
    S, NH, B, DH = 5, 2, 3, 4
    preX = torch.randn(S, NH, B, 4 * DH, generator=generator, dtype=torch.float64, requires_grad=True)
    matR = (0.3 * torch.randn(NH, DH, 4 * DH, generator=generator, dtype=torch.float64)).requires_grad_()
    y0, c0, n0 = (torch.randn(NH, B, DH, generator=generator, dtype=torch.float64, requires_grad=True)
                  for _ in range(3))
    n0.data.abs_().add_(1.0)
    m0 = torch.zeros(NH, B, DH, dtype=torch.float64)
    torch.library.opcheck(slstm_loop, (preX, matR, y0, c0, n0, m0))
    starts = torch.tensor([[True, False, False], [False, False, True], [False] * 3, [True] * 3, [False] * 3])
    torch.library.opcheck(slstm_loop, (preX, matR, y0, c0, n0, m0, starts[:, None, :, None]))
