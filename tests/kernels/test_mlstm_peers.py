"""Our mLSTM against the official mlstm_kernels package (the `peers` extra), on the same inputs.

DESIGN.md §4: our conventions are theirs (q scaled by DQK^(-1/2) inside the kernel, k unscaled in the
state, m of shape (B, NH, 1) on their side), so outputs and states must agree.
"""

import pytest
import torch

from xlstm_lm.kernels import mlstm

from .conftest import relative_error

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
peer_kernels = pytest.importorskip(
    "mlstm_kernels.torch", reason="mlstm_kernels is not installed: install the peers extra (pip install -e '.[peers]')"
)


@pytest.mark.parametrize("regime", ["realistic", "normal"])
@pytest.mark.parametrize("S, chunk_size", [(64, 16), (100, 64), (300, 256)])
def test_native_matches_peer_parallel(S, chunk_size, regime, mlstm_inputs):
    # Their parallel form stabilizes with m_t = max_s logD_ts, ours with max(b_t + 0, max_s logD_ts) (the
    # recurrent m from m_0 = 0). m cancels except in eps: each form deviates from the exact h by at most
    # eps·e^m relative, and both m are <= max(0, max ĩ) here, which bounds the difference. Their gradients
    # also flow through m (ours is detached): another eps-sized term, hence the looser gradient bound.
    inputs = mlstm_inputs(B=2, NH=2, S=S, DQK=16, DV=24, regime=regime, with_state=False)
    leaves = {name: x.requires_grad_(True) for name, x in inputs.items()}
    peer = peer_kernels.get_mlstm_kernel("parallel--native_stablef_autograd")
    h_peer = peer(**leaves, eps=1e-6)
    h = mlstm(**leaves, backend="native", chunk_size=chunk_size, eps=1e-6)
    bound = 2e-6 * max(1.0, inputs["i"].max().exp().item())
    assert relative_error(h, h_peer) <= bound
    offset = torch.randn_like(h)
    grads = torch.autograd.grad(((h + offset) ** 2).sum(), list(leaves.values()))
    grads_peer = torch.autograd.grad(((h_peer + offset) ** 2).sum(), list(leaves.values()))
    for name, grad, grad_peer in zip(leaves, grads, grads_peer, strict=True):
        assert relative_error(grad, grad_peer) <= 10 * bound, name


@pytest.mark.parametrize("regime", ["realistic", "normal", "extreme"])
def test_native_matches_peer_chunkwise_with_states(regime, mlstm_inputs):
    # Their chunkwise form uses the same stabilizers as ours, so outputs and final states agree to rounding.
    inputs = mlstm_inputs(B=2, NH=2, S=128, DQK=16, DV=24, regime=regime, with_state=True)
    q, k, v, i, f, C, n, m = inputs.values()
    peer = peer_kernels.get_mlstm_kernel("chunkwise--native_autograd")
    h_peer, (C_peer, n_peer, m_peer) = peer(
        q, k, v, i, f, c_initial=C, n_initial=n, m_initial=m[..., None], return_last_states=True, chunk_size=32
    )
    h, (C_out, n_out, m_out) = mlstm(q, k, v, i, f, (C, n, m), backend="native", chunk_size=32, return_state=True)
    for ours, theirs in [(h, h_peer), (C_out, C_peer), (n_out, n_peer), (m_out, m_peer[..., 0])]:
        assert relative_error(ours, theirs) < 1e-10
