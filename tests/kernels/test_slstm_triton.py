"""The fused Triton sLSTM backend (DESIGN.md §5, §9, §13): forward and gradients against the float64 native
loop in three gate regimes, state passing with gradients through the carried state, bf16 inputs, dispatch
and errors, and sm_90 compiles of both kernels at the GPU block shapes.

On a CPU the kernels run in the Triton interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1);
on a GPU the same tests run the compiled kernels on CUDA tensors.
"""

import importlib
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import triton
from triton.compiler import ASTSource

from xlstm_lm.kernels import slstm
from xlstm_lm.kernels.slstm import slstm_backend
from xlstm_lm.kernels.slstm.triton import _launch_config, _wide_launch_config, on_chip

from .aot import HOPPER, jit_module, markdown_table, resource_usage
from .conftest import TOLERANCES, run_slstm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
slstm_triton_module = importlib.import_module("xlstm_lm.kernels.slstm.triton")  # the package's name is a function
STATE_M = 4  # index of the stabilizer m in (y, y_S, c_S, n_S, m_S): compared, but it has no gradient


@pytest.fixture
def compare_to_native(compare_to_reference) -> Callable[..., None]:
    """`compare_to_reference` against the float64 native loop; m and the final m carry no gradient."""
    def compare(fast: Callable, inputs: dict[str, torch.Tensor], **tolerances_and_dtype) -> None:
        compare_to_reference(fast, partial(run_slstm, backend="native"), inputs, no_grad_inputs=("m",),
                             no_grad_outputs=(STATE_M,), **tolerances_and_dtype)

    return compare


def run_triton(**inputs) -> tuple[torch.Tensor, ...]:
    """The triton backend on DEVICE, inputs and outputs on the CPU (gradients flow through the moves)."""
    outputs = run_slstm(**{name: x.to(DEVICE) for name, x in inputs.items()}, backend="triton")
    return tuple(out.cpu() for out in outputs)


@pytest.mark.parametrize(
    "DH, regime, with_state",
    [(16, regime, with_state) for regime in ("realistic", "normal", "extreme") for with_state in (False, True)]
    + [(32, "realistic", False), (32, "normal", True), (64, "realistic", True)],
)
def test_matches_float64(DH, regime, with_state, slstm_inputs, compare_to_native):
    # B = 3: one batch tile of 16 with 13 masked rows; S = 37 steps, two heads.
    inputs = slstm_inputs(B=3, S=37, NH=2, DH=DH, regime=regime, with_state=with_state)
    fwd_tol, grad_tol = TOLERANCES[regime]
    compare_to_native(run_triton, inputs, fwd_tol=fwd_tol, grad_tol=grad_tol)


@pytest.mark.parametrize("B, DH", [(20, 16), (2, 128)])
def test_several_batch_tiles_and_the_widest_head(B, DH, slstm_inputs, compare_to_native):
    # B = 20: two batch tiles, the second with 12 masked rows. DH = 128 in float32 runs the on-chip kernel
    # in the interpreter; on a GPU its R does not fit in shared memory and the wide kernel takes it.
    inputs = slstm_inputs(B=B, S=6, NH=1, DH=DH, regime="normal", with_state=True)
    compare_to_native(run_triton, inputs, fwd_tol=1e-4, grad_tol=1e-3)


@pytest.mark.parametrize(
    "B, DH, regime, with_state",
    [(3, 24, regime, with_state) for regime in ("realistic", "normal", "extreme") for with_state in (False, True)]
    + [(3, 8, "normal", True), (20, 80, "normal", True), (2, 200, "realistic", True)],
)
def test_wide_heads_match_float64(B, DH, regime, with_state, slstm_inputs, compare_to_native):
    # Heads whose R is read from memory at every step (the wide kernels): widths that are no power of two
    # (24: one padded tile; 80: a full and a padded tile of 64; 200: four tiles, the paper's 192-512 range
    # at a size the interpreter runs), one below the on-chip minimum (8), and two batch tiles (B = 20).
    inputs = slstm_inputs(B=B, S=9, NH=2, DH=DH, regime=regime, with_state=with_state)
    fwd_tol, grad_tol = TOLERANCES[regime]
    compare_to_native(run_triton, inputs, fwd_tol=fwd_tol, grad_tol=grad_tol)


def test_wide_kernels_equal_the_on_chip_ones(slstm_inputs, monkeypatch):
    # One power-of-two head through both kernel pairs: the same arithmetic, so the same numbers up to the
    # order of the fp32 sums; gradients included.
    inputs = slstm_inputs(B=3, S=11, NH=2, DH=32, regime="normal", with_state=True)

    def outputs_and_grads():
        leaves = {name: x.float().requires_grad_(name != "m") for name, x in inputs.items()}
        outputs = run_triton(**leaves)
        weights = [torch.randn(out.shape, generator=torch.Generator().manual_seed(k)) for k, out in enumerate(outputs)]
        loss = sum((out * w).sum() for out, w in zip(outputs[:STATE_M], weights))
        grads = torch.autograd.grad(loss, [x for x in leaves.values() if x.requires_grad])
        return [*outputs, *grads]

    on_chip = outputs_and_grads()
    monkeypatch.setattr(slstm_triton_module, "on_chip", lambda gates_x: False)
    wide = outputs_and_grads()
    for a, b in zip(on_chip, wide):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("regime, with_state", [("realistic", False), ("extreme", True)])
def test_state_passing(regime, with_state, slstm_inputs, compare_to_native):
    # The sequence in pieces with the state carried over, against one float64 run: forward, final state
    # and gradients, which flow back through each piece's initial state.
    pieces = (10, 15, 12)
    inputs = slstm_inputs(B=2, S=sum(pieces), NH=2, DH=16, regime=regime, with_state=with_state)

    def run_in_pieces(gates_x, R, b, **state):
        outputs = []
        for piece in torch.arange(gates_x.shape[1]).split(pieces):
            out, *final = run_triton(gates_x=gates_x[:, piece], R=R, b=b, **state)
            state = dict(zip("ycnm", final))
            outputs.append(out)
        return torch.cat(outputs, dim=1), *final

    fwd_tol, grad_tol = TOLERANCES[regime]
    compare_to_native(run_in_pieces, inputs, fwd_tol=fwd_tol, grad_tol=grad_tol)


def test_bfloat16_inputs(slstm_inputs, compare_to_native):
    # bf16 in, fp32 states; on a GPU the recurrent products are bf16 too (the interpreter keeps them fp32).
    inputs = slstm_inputs(B=3, S=37, NH=2, DH=32, regime="realistic", with_state=True)
    compare_to_native(run_triton, inputs, fwd_tol=1e-2, grad_tol=2e-2, dtype=torch.bfloat16)


@pytest.mark.parametrize("DH, dtype, device, resident", [
    (64, torch.float32, "cuda", True), (128, torch.bfloat16, "cuda", True), (128, torch.float32, "cpu", True),
    (128, torch.float32, "cuda", False), (192, torch.bfloat16, "cuda", False), (256, torch.bfloat16, "cuda", False),
    (8, torch.float32, "cpu", False), (48, torch.float32, "cpu", False),
])
def test_which_kernel_takes_a_head(DH, dtype, device, resident):
    # R stays on chip for powers of two in [16, 128] that fit in shared memory; every other head (the paper's
    # 192 to 512 units among them) runs the wide kernels, which read R from memory at every step. So do
    # sequences whose offsets pass int32, which only the wide kernels compute in int64.
    gates_x = SimpleNamespace(shape=(2, 8, 4, 1, DH), dtype=dtype, is_cuda=device == "cuda")
    assert on_chip(gates_x) == resident
    assert not on_chip(SimpleNamespace(shape=(1, 2**31 // (4 * DH), 4, 1, DH), dtype=dtype, is_cuda=False))
    assert slstm_backend("auto").table[device, dtype].name == ("triton" if device == "cuda" else "native")


def test_auto_runs_float64_natively_on_a_gpu():
    choice = slstm_backend("auto")
    assert choice.table["cuda", torch.float64].name == "native"
    assert choice.for_input(torch.zeros(1, dtype=torch.float64)).name == "native"
    described = choice.describe()
    assert "triton (fused Triton kernels" in described and "cuda float64" in described.split("native")[1]


def test_auto_is_triton_on_cuda_and_native_elsewhere(slstm_inputs):
    inputs = slstm_inputs(B=2, S=5, NH=1, DH=16, regime="normal", with_state=False)
    args = [inputs[name].float().to(DEVICE) for name in ("gates_x", "R", "b")]
    expected = slstm(*args, backend="triton" if DEVICE == "cuda" else "native")
    assert torch.equal(slstm(*args, backend="auto"), expected)


def test_cpu_tensors_without_the_interpreter_are_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        slstm(torch.randn(1, 2, 4, 1, 16), torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16), backend="triton")


def test_float64_is_an_error():
    with pytest.raises(ValueError, match="float64"):
        slstm(*(torch.randn(shape, device=DEVICE, dtype=torch.float64)
                for shape in [(1, 2, 4, 1, 16), (4, 1, 16, 16), (4, 1, 16)]), backend="triton")


# --- Ahead-of-time compiles for Hopper (DESIGN.md §13) ---

KERNELS = jit_module("xlstm_lm.kernels.slstm.triton_kernels")
AOT_SHAPES = [64, 128]  # head dims of the GPU runs; bf16 activations, batch tile 16
H100_SHARED_MEMORY = 227 * 1024  # the most one block may use


WIDE_AOT_SHAPES = [192, 256, 512]  # the paper's sLSTM heads at 125m, 350m and 1.3b (4 heads)


def compile_kernel(direction: str, DH: int, wide: bool = False, starts: bool = False):
    """A kernel compiled for sm_90 with the launch configuration of `triton.py` (bf16 in, R in bf16); the
    on-chip ones with the document-start code if `starts`.

    Note: compiled here rather than with `aot.compile_for_hopper`, which has no num_stages: the launcher
    passes num_stages=1, without which the backward at DH = 128 needs more shared memory than an SM has.
    """
    backward = direction == "backward"
    _, config = _wide_launch_config(16, 4, DH, backward) if wide else _launch_config(B=16, NH=4, DH=DH)
    options = {key: config.pop(key) for key in ("num_warps", "num_stages")}
    kernels = (KERNELS.slstm_fw_wide_kernel, KERNELS.slstm_bw_wide_kernel) if wide \
        else (KERNELS.slstm_fw_kernel, KERNELS.slstm_bw_kernel)
    kernel = kernels[backward]
    constexprs = {**config, "DOT_BF16": True} | ({"SAVE": True} if direction == "forward" else {})
    constexprs |= {} if wide else {"STARTS": starts}

    def arg_type(arg: str) -> str:
        if arg in constexprs:
            return "constexpr"
        if arg in ("B", "S", "NH"):
            return "i32"
        if arg == "starts_ptr":
            return "*u8"
        return "*bf16" if arg in ("gx_ptr", "dy_ptr", "R_ptr") else "*fp32"

    signature = {arg: arg_type(arg) for arg in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=HOPPER, options=options)


@pytest.mark.parametrize("DH", AOT_SHAPES)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_kernel_compiles_for_hopper(direction, DH):
    """Both kernels compile for sm_90 at the GPU block shapes, spill nothing, fit an H100's shared memory
    and multiply with HGMMA (wgmma).

    Each step multiplies R_gᵀ (DH, DH) (forward; R_g backward) by a (DH, 16) tile of y (of the gate
    gradients): with the head dim as the M dimension, M = 64 or 128 meets wgmma's 64 rows per warp
    group and N = 16 is a valid wgmma width (the 16-row batch tile as M would allow only mma.sync).
    R, passed in bf16, stays in shared memory for all steps, where wgmma reads it (128 KiB at DH = 128,
    more than the register file could hold next to the states).
    """
    usage = resource_usage(compile_kernel(direction, DH))
    assert usage.local_bytes == 0 and usage.stack_bytes == 0, f"spills: {usage}"
    assert usage.shared_bytes <= H100_SHARED_MEMORY, usage
    assert usage.hgmma > 0, f"no HGMMA: {usage}"


@pytest.mark.parametrize("direction", [
    "forward",
    pytest.param("backward", marks=pytest.mark.xfail(strict=True, reason="issue #16: 48 bytes of stack at DH = 128")),
])
def test_kernel_with_document_starts_compiles_for_hopper(direction):
    usage = resource_usage(compile_kernel(direction, 128, starts=True))
    assert usage.local_bytes == 0 and usage.stack_bytes == 0, f"spills: {usage}"


@pytest.mark.parametrize("DH", WIDE_AOT_SHAPES)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_wide_kernel_compiles_for_hopper(direction, DH):
    """The wide kernels compile for sm_90 at the paper's head widths with no spills and HGMMA products:
    R_gᵀ tiles of 64 x 64 units times a (64, 16) tile of y (of the gate gradients), read from memory."""
    usage = resource_usage(compile_kernel(direction, DH, wide=True))
    assert usage.local_bytes == 0 and usage.stack_bytes == 0, f"spills: {usage}"
    assert usage.shared_bytes <= H100_SHARED_MEMORY, usage
    assert usage.hgmma > 0, f"no HGMMA: {usage}"


if __name__ == "__main__":
    print(markdown_table([(f"DH={DH} BB=16 bf16", resource_usage(compile_kernel(direction, DH)))
                          for direction in ("forward", "backward") for DH in AOT_SHAPES]
                         + [(f"wide DH={DH} BB=16 bf16", resource_usage(compile_kernel(direction, DH, wide=True)))
                            for direction in ("forward", "backward") for DH in WIDE_AOT_SHAPES]))
