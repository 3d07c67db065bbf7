"""The stable parallel mLSTM reference against the unstabilized definition of DESIGN.md §4, in float64."""

import pytest
import torch

from .conftest import relative_error, run_mlstm


def unstabilized_mlstm(q, k, v, i, f, C=None, n=None, m=None):
    """C_t = σ(f̃_t) C_{t-1} + exp(ĩ_t) k_t v_tᵀ, n_t alike, h_t = q̂_tᵀ C_t / max(|q̂_tᵀ n_t|, 1).

    Returns (h (B, NH, S, DV), C_S, n_S); a given state (C, n, m) stands for the memory (C·e^m, n·e^m).
    """
    B, NH, S, DQK = q.shape
    if C is None:
        C, n = q.new_zeros(B, NH, DQK, v.shape[-1]), q.new_zeros(B, NH, DQK)
    else:
        C, n = C * m.exp()[..., None, None], n * m.exp()[..., None]
    outputs = []
    for t in range(S):
        forget, gain = torch.sigmoid(f[:, :, t]), torch.exp(i[:, :, t])  # (B, NH)
        C = forget[..., None, None] * C + gain[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = forget[..., None] * n + gain[..., None] * k[:, :, t]
        q_hat = q[:, :, t] * DQK**-0.5
        numerator = torch.einsum("bhd,bhdv->bhv", q_hat, C)
        outputs.append(numerator / (q_hat * n).sum(-1).abs().clamp(min=1)[..., None])
    return torch.stack(outputs, dim=2), C, n


def unstabilized_view(run):
    """Wrap a (h, C, n, m) backend so that it returns (h, C·e^m, n·e^m), the unstabilized final state."""

    def wrapped(**inputs):
        h, C, n, m = run(**inputs)
        return h, C * m.exp()[..., None, None], n * m.exp()[..., None]

    return wrapped


@pytest.mark.parametrize("regime", ["realistic", "normal"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S", [2, 9, 70])
def test_reference_equals_definition_without_eps(
    S, with_state, regime, mlstm_inputs, compare_to_reference
):
    # With eps = 0 the stabilizer cancels exactly (max(|x|e^-m, e^-m) = e^-m max(|x|, 1)), and m is held
    # fixed by autograd, so outputs, final states and gradients agree to float64 rounding. (Not S = 1: a
    # saturated single step has dh/dq = 0 exactly, and the relative error of two roundings is O(1).)
    inputs = mlstm_inputs(B=2, NH=2, S=S, DQK=8, DV=12, regime=regime, with_state=with_state)
    compare_to_reference(
        unstabilized_view(run_mlstm("reference", eps=0.0)), unstabilized_mlstm, inputs,
        fwd_tol=1e-11, grad_tol=1e-10, no_grad_inputs=("m",), dtype=torch.float64,
    )


@pytest.mark.parametrize("with_state", [False, True])
def test_reference_eps_effect_is_bounded(with_state, mlstm_inputs):
    # With eps the output is h_true · max(|x|, 1) / (max(|x|, 1) + eps·e^m): relative deviation at most
    # eps·e^m per step, and m_t <= max(m_0, max ĩ) since logσ < 0 (m_0 = 0 for a fresh state).
    eps = 1e-6
    inputs = mlstm_inputs(B=2, NH=2, S=50, DQK=8, DV=8, regime="normal", with_state=with_state)
    h, *_ = run_mlstm("reference", eps=eps)(**inputs)
    m_bound = max(inputs["i"].max().item(), inputs["m"].max().item() if with_state else 0.0)
    assert relative_error(h, unstabilized_mlstm(**inputs)[0]) <= eps * torch.tensor(m_bound).exp().item()
