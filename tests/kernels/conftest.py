"""Shared helpers for the kernel tests: seeded random inputs in gate regimes, and the template that
compares a backend in float32 with a float64 reference, forward and gradients (DESIGN.md §9).

Notation: B batch, NH heads, S sequence length, DQK/DV mLSTM head dims, DH sLSTM head dim.
"""

import os
import zlib
from collections.abc import Callable

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter (DESIGN.md §9). Triton 3.8 reads the variable
# when a kernel is decorated (@triton.jit), so the kernel backends import their @triton.jit modules at
# their first launch, after this line, even though the root conftest imports the package first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from xlstm_lm.kernels import mlstm, slstm  # noqa: E402

# Gate pre-activation regimes of DESIGN.md §9; "extreme" spreads the gates over [-30, 30].
GATE_REGIMES = ("realistic", "normal", "extreme")
# Relative error bounds (forward, gradients) for float32 against float64, DESIGN.md §9: at ±30 gates the
# normalizer division is ill-conditioned in float32, so those bounds are looser.
TOLERANCES = {"realistic": (1e-4, 1e-3), "normal": (1e-4, 1e-3), "extreme": (1e-3, 1e-2)}


# Where the Triton backends run: CUDA when present, else the CPU under the interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_device(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """fn on DEVICE: inputs by name are moved there, outputs back to the CPU (differentiably)."""

    def run(**inputs):
        return tuple(out.cpu() for out in fn(**{name: x.to(DEVICE) for name, x in inputs.items()}))

    return run


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual - expected‖ / ‖expected‖ in float64; the absolute error when expected is zero."""
    error, scale = (actual.double() - expected.double()).norm().item(), expected.double().norm().item()
    return error / scale if scale > 0 else error


@pytest.fixture
def rng(request) -> torch.Generator:
    """A generator seeded from the test id: fresh data for every parametrization, reproducible runs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _gates(shape: tuple[int, ...], regime: str, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, forget) gate pre-activations in a regime, float64."""
    if regime == "realistic":  # the 7B init: input gate bias -10, forget gate biases 3..6
        return -10 * torch.rand(shape, generator=rng, dtype=torch.float64), _uniform(shape, 3, 6, rng)
    if regime == "normal":
        return tuple(torch.randn(shape, generator=rng, dtype=torch.float64) for _ in range(2))
    if regime == "extreme":
        return _uniform(shape, -30, 30, rng), _uniform(shape, -30, 30, rng)
    raise ValueError(regime)


def _uniform(shape: tuple[int, ...], low: float, high: float, rng: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=rng, dtype=torch.float64)


@pytest.fixture
def mlstm_inputs(rng) -> Callable[..., dict[str, torch.Tensor]]:
    """Factory: float64 mLSTM inputs q, k, v, i, f and, with_state, an initial state C, n, m."""

    def make(B: int, NH: int, S: int, DQK: int, DV: int, regime: str, with_state: bool) -> dict[str, torch.Tensor]:
        def randn(*shape):
            return torch.randn(shape, generator=rng, dtype=torch.float64)

        i, f = _gates((B, NH, S), regime, rng)
        inputs = {"q": randn(B, NH, S, DQK), "k": randn(B, NH, S, DQK), "v": randn(B, NH, S, DV), "i": i, "f": f}
        if with_state:  # m is a log scale like the input gates
            inputs |= {"C": randn(B, NH, DQK, DV), "n": randn(B, NH, DQK), "m": _gates((B, NH), regime, rng)[0]}
        return inputs

    return make


@pytest.fixture
def dominant_pair_case(mlstm_inputs, rng) -> Callable[[Callable, Callable], float]:
    """The relative error of df̃ (float32 `run` against float64 `reference`) where two steps outweigh the rest
    of a 128-step chunk with nearly opposite keys: the later rows' den is small, their pair terms
    G_rs = S_rs ∂L/∂S_rs reach ~1e6 and cancel inside each row. df̃ sums the rows' and the columns' sums of G
    over suffixes of the chunk, where such a pair cancels only when both sums hold the same float32 G_rs and
    add them without rounding them away (docs/benchmarks.md, issue 16 item 4b)."""

    def error(run: Callable, reference: Callable) -> float:
        inputs = mlstm_inputs(B=1, NH=4, S=128, DQK=16, DV=32, regime="extreme", with_state=False)
        inputs["i"][..., [40, 41]] = 30.0
        inputs["f"][..., 41:] = 30.0
        inputs["k"][..., 41, :] = -inputs["k"][..., 40, :] + 1e-2 * torch.randn(1, 4, 16, generator=rng,
                                                                                   dtype=torch.float64)
        offset = torch.randn(1, 4, 128, 32, generator=rng, dtype=torch.float64)
        grads = []
        for fn, dtype in ((reference, torch.float64), (run, torch.float32)):
            leaves = [inputs[name].float().to(dtype).requires_grad_(True) for name in "qkvif"]
            h = fn(**dict(zip("qkvif", leaves)))[0]
            grads.append(torch.autograd.grad(((h.double() + offset) ** 2).sum(), leaves[4])[0])
        return relative_error(grads[1], grads[0])

    return error


@pytest.fixture
def saturated_step_errors(mlstm_inputs, rng) -> Callable[[Callable, int], dict[str, float]]:
    """The largest relative error over heads of the gradients of q, k, v, ĩ (float32 `run` against the float64
    reference) at ±30 gates, where most steps saturate: h = sign(q̂·k) v up to eps, and the gradients of q, k and
    ĩ are the eps-sized residual of two terms near dnum·v. 4 × 8 heads of S steps, from the same float32 values."""

    def errors(run: Callable, S: int) -> dict[str, float]:
        inputs = mlstm_inputs(B=4, NH=8, S=S, DQK=16, DV=24, regime="extreme", with_state=False)
        offset = torch.randn(4, 8, S, 24, dtype=torch.float64, generator=rng)
        grads = []
        for fn, dtype in ((run_mlstm("reference"), torch.float64), (run, torch.float32)):
            leaves = [inputs[name].float().to(dtype).requires_grad_(True) for name in "qkvi"]
            h = fn(**dict(zip("qkvif", [*leaves, inputs["f"].float().to(dtype)])))[0]
            grads.append(torch.autograd.grad(((h.double() + offset) ** 2).sum(), leaves))
        return {name: max(relative_error(head, expected) for head, expected in zip(grad.flatten(0, 1),
                                                                                   reference.flatten(0, 1)))
                for name, grad, reference in zip("qkvi", grads[1], grads[0], strict=True)}

    return errors


@pytest.fixture
def slstm_inputs(rng) -> Callable[..., dict[str, torch.Tensor]]:
    """Factory: float64 sLSTM inputs gates_x, R, b and, with_state, an initial state y, c, n, m."""

    def make(B: int, S: int, NH: int, DH: int, regime: str, with_state: bool) -> dict[str, torch.Tensor]:
        igate, fgate = _gates((B, S, NH, DH), regime, rng)
        if regime == "extreme":
            zgate, ogate = _uniform((2, B, S, NH, DH), -30, 30, rng)
        else:
            zgate, ogate = torch.randn((2, B, S, NH, DH), generator=rng, dtype=torch.float64)
        inputs = {
            "gates_x": torch.stack([igate, fgate, zgate, ogate], dim=2),  # (B, S, 4, NH, DH)
            "R": torch.randn((4, NH, DH, DH), generator=rng, dtype=torch.float64) * DH**-0.5,
            "b": torch.randn((4, NH, DH), generator=rng, dtype=torch.float64) * 0.5,
        }
        if with_state:  # a reachable state: |y| < 1, n > 0, m a log scale like the input gates
            inputs |= {
                "y": _uniform((B, NH, DH), -1, 1, rng),
                "c": torch.randn((B, NH, DH), generator=rng, dtype=torch.float64),
                "n": _uniform((B, NH, DH), 0.5, 2, rng),
                "m": _gates((B, NH, DH), regime, rng)[0],
            }
        return inputs

    return make


@pytest.fixture
def compare_to_reference(rng) -> Callable[..., None]:
    """Template: `fast` on the inputs in `dtype` against `reference` on the same values in float64.

    Both callables take the inputs as keywords and return a tuple of outputs. The loss is offset-quadratic,
    Σ (out + offset)² with random offsets, so every gradient is nontrivial; outputs in `no_grad_outputs`
    (stabilizers) are compared but left out of it. Every input not in `no_grad_inputs` gets a gradient,
    compared by relative error unless grad_tol is None (then only checked finite). NaN or inf never passes.
    The reference sees the inputs rounded to `dtype`, so only the arithmetic of `fast` is measured.
    """

    def compare(
        fast: Callable, reference: Callable, inputs: dict[str, torch.Tensor], *, fwd_tol: float,
        grad_tol: float | None, no_grad_inputs: tuple[str, ...] = (), no_grad_outputs: tuple[int, ...] = (),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        inputs = {name: x.to(dtype) for name, x in inputs.items()}
        offsets = []

        def forward_backward(fn, fn_dtype):
            leaves = {
                name: x.to(fn_dtype, copy=True).requires_grad_(name not in no_grad_inputs) for name, x in inputs.items()
            }
            outputs = fn(**leaves)
            if not offsets:
                offsets.extend(torch.randn(out.shape, generator=rng, dtype=torch.float64) for out in outputs)
            loss = sum(
                ((out.double() + offset) ** 2).sum()
                for index, (out, offset) in enumerate(zip(outputs, offsets))
                if index not in no_grad_outputs
            )
            loss.backward()
            return outputs, {name: x.grad for name, x in leaves.items() if x.requires_grad}

        ref_outputs, ref_grads = forward_backward(reference, torch.float64)
        outputs, grads = forward_backward(fast, dtype)
        for index, (out, ref) in enumerate(zip(outputs, ref_outputs, strict=True)):
            assert torch.isfinite(out).all(), f"output {index} is not finite"
            assert relative_error(out, ref) < fwd_tol, f"output {index}: {relative_error(out, ref):.2e}"
        for name, ref in ref_grads.items():
            assert torch.isfinite(grads[name]).all(), f"gradient of {name} is not finite"
            if grad_tol is not None:
                error = relative_error(grads[name], ref)
                assert error < grad_tol, f"d{name}: {error:.2e}"

    return compare


def run_mlstm(backend: str, chunk_size: int = 64, eps: float = 1e-6) -> Callable[..., tuple[torch.Tensor, ...]]:
    """mlstm with a backend as a function of the inputs by name (as `mlstm_inputs` names them),
    returning (h, C, n, m)."""

    def run(q, k, v, i, f, C=None, n=None, m=None):
        state = None if C is None else (C, n, m)
        h, final = mlstm(q, k, v, i, f, state, backend=backend, chunk_size=chunk_size, eps=eps, return_state=True)
        return (h, *final)

    return run


def run_slstm(gates_x, R, b, y=None, c=None, n=None, m=None, *, backend: str = "auto") -> tuple[torch.Tensor, ...]:
    """slstm on the inputs by name (as `slstm_inputs` names them), returning (y, y_S, c_S, n_S, m_S)."""
    state = None if y is None else (y, c, n, m)
    out, final = slstm(gates_x, R, b, state, backend=backend, return_state=True)
    return (out, *final)
