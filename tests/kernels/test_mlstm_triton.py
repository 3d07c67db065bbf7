"""The Triton mLSTM backend against the float64 reference (DESIGN.md §4, §9): forward and gradients of q, k,
v, i, f and the initial state in three gate regimes, partial last chunks, chunk sizes up to 256, DQK != DV,
state passing, bf16 inputs, the generation step, and the dispatcher's choices. On a machine without a GPU it
runs in the Triton interpreter (tests/kernels/conftest.py), so the shapes stay tiny."""

import pytest
import torch

from xlstm_lm.kernels import mlstm, mlstm_backend, mlstm_step
from xlstm_lm.kernels.mlstm.triton import mlstm_triton_step

from .conftest import DEVICE, TOLERANCES, on_device, relative_error, run_mlstm
from .test_mlstm_backends import STABILIZER, gradient_tolerance

# (S, chunk size): exact multiples and partial last chunks, one step, chunk sizes 16..256
CASES = [(1, 16), (40, 16), (64, 64), (100, 64), (256, 256), (300, 256)]


def run_triton(chunk_size: int):
    return on_device(run_mlstm("triton", chunk_size))


@pytest.mark.parametrize("regime", ["realistic", "normal", "extreme"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S, chunk_size", CASES)
def test_triton_matches_reference(S, chunk_size, with_state, regime, mlstm_inputs, compare_to_reference):
    inputs = mlstm_inputs(B=1, NH=2, S=S, DQK=16, DV=32, regime=regime, with_state=with_state)
    compare_to_reference(
        run_triton(chunk_size), run_mlstm("reference"), inputs,
        fwd_tol=TOLERANCES[regime][0], grad_tol=gradient_tolerance(regime, S), **STABILIZER,
    )


def test_extreme_gates_as_accurate_as_the_native_form(mlstm_inputs):
    # With forget gates near -30, b (the cumulative log forget gate) reaches 30·L inside a chunk; a float32
    # sum of it loses the low bits of b_r - b_s and made h 10-100x less accurate than the native form,
    # which sums b in float64 (as the kernels now do). Several draws, each against the float64 reference.
    for _ in range(6):
        inputs = mlstm_inputs(B=1, NH=2, S=100, DQK=16, DV=32, regime="extreme", with_state=False)
        sequence = [inputs[name].float() for name in "qkvif"]
        reference = mlstm(*(x.double() for x in sequence), backend="reference")
        native = relative_error(mlstm(*sequence, backend="native", chunk_size=64), reference)
        ours = relative_error(run_triton(64)(**dict(zip("qkvif", sequence)))[0], reference)
        assert ours <= 4 * native + 1e-6, (ours, native)


def test_an_initial_state_that_dominates_the_outputs(mlstm_inputs, compare_to_reference):
    # m0 = 25 with unit-normal gates: the state outweighs every input for ~35 steps, and its parts of num
    # and den cancel in h, so q·dq is a tiny difference of large terms. Taken from dq it made df̃ 10% off;
    # the kernels form the state's term β_r ∂L/∂β_r from float64 sums, with δ_r, where it cancels exactly.
    for _ in range(4):
        inputs = mlstm_inputs(B=1, NH=2, S=100, DQK=16, DV=32, regime="normal", with_state=True)
        inputs["m"] = torch.tensor([[-25.0, 25.0]], dtype=torch.float64)
        compare_to_reference(run_triton(64), run_mlstm("reference"), inputs, fwd_tol=1e-4, grad_tol=1e-3,
                             **STABILIZER)


def test_large_pair_terms_inside_a_long_chunk_cancel_in_the_forget_gate_gradient(dominant_pair_case):
    # With the row sums in closed form (q·dq) the kernels were 0.5..1e4 off here; den_grad_kernel sums both
    # sides from the same float32 tile in float64: 9e-6..1.3e-4 (docs/benchmarks.md).
    for _ in range(2):
        assert dominant_pair_case(run_triton(128), run_mlstm("reference")) < TOLERANCES["extreme"][1]


def test_saturated_steps_have_accurate_gradients_in_float32(saturated_step_errors):
    # With δ from float32 h and den the gradients were up to 0.2 off; den_grad_kernel sums den and dnum·num in
    # float64 from the same float32 products the gradient kernels add δ to, so they stay near float32 rounding
    # (measured <= 4e-5 per head). Each head runs 4 steps: rows of several pairs, whose den the forward rounded.
    for name, error in saturated_step_errors(run_triton(16), S=4).items():
        assert error < 1e-4, name


def test_an_input_gate_of_minus_infinity_writes_nothing(mlstm_inputs, compare_to_reference):
    # ĩ = -inf (a step that must not be written) is exact in every form; the float64 exponent parts of
    # the kernels split it into float32 pairs without making inf - inf
    inputs = mlstm_inputs(B=1, NH=2, S=40, DQK=16, DV=32, regime="normal", with_state=True)
    inputs["i"][..., [0, 5, 16, 39]] = float("-inf")
    compare_to_reference(run_triton(16), run_mlstm("reference"), inputs, fwd_tol=1e-4, grad_tol=1e-3,
                         no_grad_inputs=("i", "m"), no_grad_outputs=(3,))


@pytest.mark.parametrize("DQK, DV, S, NH", [(32, 16, 70, 1), (24, 40, 70, 1), (64, 64, 70, 1), (160, 80, 70, 2),
                                             (160, 80, 64, 2), (32, 256, 40, 1), (256, 32, 40, 1)])
def test_head_dims(DQK, DV, S, NH, mlstm_inputs, compare_to_reference):
    # DQK != DV both ways, dims that are not powers of two (masked blocks), a 64-wide head, and heads wider
    # than one tile: dq in two 128-wide blocks, dk in 64-wide (S not a multiple of 16) or 128-wide blocks,
    # reductions over DV in two blocks of 64, over two heads (per-head strides of the per-block buffers);
    # DV 256: h and dv in two 128-wide tiles; DQK 256: dq, dk in two, the state tiles in four along DQK
    inputs = mlstm_inputs(B=1, NH=NH, S=S, DQK=DQK, DV=DV, regime="realistic", with_state=True)
    compare_to_reference(run_triton(32), run_mlstm("reference"), inputs, fwd_tol=1e-4, grad_tol=1e-3, **STABILIZER)


@pytest.mark.parametrize("regime", ["realistic", "extreme"])
@pytest.mark.parametrize("chunk_size, pieces", [(16, (37, 50, 13)), (64, (64, 36)), (256, (5, 95))])
def test_state_passing(chunk_size, pieces, regime, mlstm_inputs, rng):
    # Pieces with the state carried over equal one run, final state included, and so do the gradients,
    # which reach the earlier pieces and the initial state through the carried states. Both are float32
    # with their chunk boundaries in different places, so they agree to the bounds against float64.
    inputs = mlstm_inputs(B=1, NH=2, S=sum(pieces), DQK=16, DV=16, regime=regime, with_state=True)
    weights = [torch.randn(shape, generator=rng, dtype=torch.float64) for shape in [(1, 2, sum(pieces), 16),
                                                                                   (1, 2, 16, 16), (1, 2, 16)]]

    def run(split):
        leaves = [inputs[name].float().to(DEVICE).requires_grad_(name != "m") for name in "qkvifCnm"]
        state, outputs = tuple(leaves[5:]), []
        for piece in torch.arange(sum(pieces)).split(split):
            h, state = mlstm(*(x[:, :, piece] for x in leaves[:5]), state, backend="triton", chunk_size=chunk_size,
                             return_state=True)
            outputs.append(h)
        results = [torch.cat(outputs, dim=2), *state]
        sum((out.double().cpu() * weight).sum() for out, weight in zip(results, weights)).backward()
        return results, [x.grad for x in leaves[:7]]

    (outputs, grads), (outputs_full, grads_full) = run(pieces), run((sum(pieces),))
    fwd_bound, grad_bound = TOLERANCES[regime]
    for part, part_full in zip(outputs, outputs_full, strict=True):
        assert relative_error(part, part_full) < fwd_bound
    for name, grad, grad_full in zip("qkvifCn", grads, grads_full, strict=True):
        assert relative_error(grad, grad_full) < grad_bound, name


def test_bfloat16_inputs(mlstm_inputs, rng):
    # DESIGN.md §9: bf16 activations give relative errors near 1e-2; states stay float32. The kernels
    # write dq, dk, dv in bf16 and the gate gradients in float32.
    inputs = mlstm_inputs(B=1, NH=2, S=100, DQK=16, DV=16, regime="realistic", with_state=False)
    sequence = [inputs[name].bfloat16() for name in "qkv"] + [inputs[name].float() for name in "if"]
    weights = torch.randn(1, 2, 100, 16, generator=rng, dtype=torch.float64)

    def run(backend, dtype_of):
        leaves = [dtype_of(x).detach().requires_grad_() for x in sequence]
        h, (C, n, m) = mlstm(*leaves, backend=backend, chunk_size=32, return_state=True)
        (h.double().cpu() * weights).sum().backward()
        return h, (C, n, m), [x.grad for x in leaves]

    h, (C, n, m), grads = run("triton", lambda x: x.to(DEVICE))
    h_ref, state_ref, grads_ref = run("reference", torch.Tensor.double)
    assert h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32
    assert relative_error(h.cpu(), h_ref) < 1e-2
    # the states accumulate in float32: under the interpreter (float32 products) to float32 accuracy, on
    # a GPU with the bf16 rounding of the weighted keys in the products
    state_bound = 1e-2 if DEVICE.type == "cuda" else 1e-5
    for part, part_ref in zip((C, n), state_ref[:2], strict=True):
        assert relative_error(part.cpu(), part_ref) < state_bound
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3 + [torch.float32] * 2
    for name, grad, grad_ref in zip("qkvif", grads, grads_ref):
        assert relative_error(grad.cpu(), grad_ref) < 1e-2, name


@pytest.mark.parametrize("regime, DQK, DV", [("normal", 16, 24), ("extreme", 16, 24), ("normal", 32, 96)])
def test_step_matches_mlstm_step(regime, DQK, DV, mlstm_inputs):
    # DV 96: two tiles of 64 value columns
    inputs = mlstm_inputs(B=2, NH=2, S=4, DQK=DQK, DV=DV, regime=regime, with_state=True)
    state = state_ref = tuple(inputs[name] for name in "Cnm")
    state = tuple(x.float().to(DEVICE) for x in state)
    for t in range(4):
        token = [inputs[name][:, :, t] for name in "qkvif"]
        h_ref, state_ref = mlstm_step(*token, state_ref)
        h, state = mlstm_triton_step(*(x.float().to(DEVICE) for x in token), state)
        assert relative_error(h.cpu(), h_ref) < 1e-5
        for part, part_ref in zip(state, state_ref, strict=True):
            assert part.dtype == torch.float32 and relative_error(part.cpu(), part_ref) < 1e-5


def test_step_from_no_state_continues_a_prefill(mlstm_inputs):
    inputs = mlstm_inputs(B=1, NH=2, S=21, DQK=16, DV=16, regime="realistic", with_state=False)
    sequence = [inputs[name].float().to(DEVICE) for name in "qkvif"]
    h_full = mlstm(*sequence, backend="triton", chunk_size=16)
    h, state = mlstm_triton_step(*(x[:, :, 0] for x in sequence), None)
    outputs = [h]
    h, state = mlstm(*(x[:, :, 1:20] for x in sequence), state, backend="triton", chunk_size=16, return_state=True)
    outputs += h.unbind(2)
    outputs.append(mlstm_triton_step(*(x[:, :, 20] for x in sequence), state)[0])
    assert relative_error(torch.stack(outputs, dim=2), h_full) < 1e-5


def test_auto_is_triton_on_cuda_and_native_elsewhere(mlstm_inputs):
    inputs = mlstm_inputs(B=1, NH=1, S=20, DQK=16, DV=16, regime="normal", with_state=False)
    sequence = [inputs[name].float().to(DEVICE) for name in "qkvif"]
    expected = mlstm(*sequence, backend="triton" if DEVICE.type == "cuda" else "native", chunk_size=16)
    assert torch.equal(mlstm(*sequence, chunk_size=16), expected)


def test_cpu_tensors_without_the_interpreter_are_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        mlstm(q, q, q, q[..., 0], q[..., 0], backend="triton", chunk_size=16)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        mlstm_triton_step(q[:, :, 0], q[:, :, 0], q[:, :, 0], q[:, :, 0, 0], q[:, :, 0, 0], None)


def test_float64_is_an_error_not_a_silent_float32_run():
    q = torch.randn(1, 1, 8, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float32 or bfloat16 activations, got torch.float64"):
        mlstm(q, q, q, q[..., 0], q[..., 0], backend="triton", chunk_size=16)


@pytest.mark.parametrize("chunk_size", [5, 48])
def test_chunk_size_is_rounded_up_to_a_power_of_two(chunk_size, mlstm_inputs):
    # the chunkwise form does not depend on the chunk length beyond rounding
    inputs = mlstm_inputs(B=1, NH=1, S=40, DQK=16, DV=16, regime="normal", with_state=False)
    sequence = [inputs[name].float().to(DEVICE) for name in "qkvif"]
    h = mlstm(*sequence, backend="triton", chunk_size=chunk_size)
    assert relative_error(h.cpu(), mlstm(*(x.cpu() for x in sequence), backend="native", chunk_size=8)) < 1e-5


def test_the_dispatchers_step_runs_the_triton_step_kernel():
    """Generation calls mlstm_step: with backend triton it runs the one-token kernel, with equal results."""
    assert mlstm_backend("triton").for_input(torch.zeros(1)).step is mlstm_triton_step
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 16, device=DEVICE), torch.randn(2, 2, 16, device=DEVICE)
    v, i, f = torch.randn(2, 2, 32, device=DEVICE), torch.randn(2, 2, device=DEVICE), torch.randn(2, 2, device=DEVICE) + 4
    state = (torch.randn(2, 2, 16, 32, device=DEVICE), torch.randn(2, 2, 16, device=DEVICE), torch.zeros(2, 2, device=DEVICE))
    h, new_state = mlstm_step(q, k, v, i, f, state, backend="triton")
    h_native, native_state = mlstm_step(q, k, v, i, f, state, backend="native")
    torch.testing.assert_close(h, h_native, rtol=1e-5, atol=1e-6)
    for ours, reference in zip(new_state, native_state):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
