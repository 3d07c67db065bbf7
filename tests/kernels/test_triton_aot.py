"""The mLSTM Triton kernels compiled ahead of time for Hopper (sm_90), no GPU needed (DESIGN.md §13):
every kernel compiles at the block shapes a GPU run uses, uses no local memory, spills no registers to the
stack, and its matrix products run as HGMMA. Compiled as a launch compiles them: for 16-byte aligned
tensors (the launchers pass no others, checked below), and apart for each pattern of the sequence length
and the chunk count being multiples of 16 or not. `python -m tests.kernels.test_triton_aot` prints the resource
table (for any S and for S and NC multiples of 16)."""

import dataclasses
import functools
from types import SimpleNamespace

import pytest
import torch
import triton.language as tl

from xlstm_lm.kernels.mlstm import triton as mlstm_triton

from .aot import compile_for_hopper, jit_module, markdown_table, resource_usage
from .conftest import DEVICE

KERNELS = jit_module("xlstm_lm.kernels.mlstm.triton_kernels")
ACTIVATIONS = {"Q", "K", "V", "H", "dH", "dQ", "dK", "dV"}  # bf16 tensors; b is fp64, every other pointer fp32
# (kernel, has matrix products, uses the sequential kernels' state tile)
LAUNCHES = [
    ("chunk_states_kernel", True, True), ("chunk_outputs_kernel", True, False), ("row_scales_kernel", False, False),
    ("state_grads_kernel", True, True), ("grad_q_kernel", True, False), ("grad_k_kernel", True, False),
    ("den_grad_kernel", True, False), ("grad_v_kernel", True, False), ("grad_gates_kernel", False, False),
    ("step_kernel", False, False),
]
# (chunk size L, DQK, DV), bf16 activations; the last two are the benchmark's heads at the larger chunks it times
SHAPES = [(64, 128, 256), (64, 128, 128), (128, 256, 128), (128, 128, 256), (256, 128, 256)]
# which of the sequence length S and the chunk count NC are multiples of 16: a launch compiles one variant
# per pattern (at L = 64: S = 512 has S but not NC, S = 1000 NC but not S, S = 100 neither)
LENGTH_PATTERNS = [(), ("S",), ("NC",), ("S", "NC")]


def constexprs(name: str, L: int, DQK: int, DV: int, multiples_of_16: tuple[str, ...] = (),
               documents: bool = False) -> dict:
    """The constexpr arguments the launcher in `xlstm_lm.kernels.mlstm.triton` passes to kernel `name`, with
    or without document starts."""
    seq_len = 16 if "S" in multiples_of_16 else 17  # the blocks depend only on whether it is a multiple of 16
    blocks = mlstm_triton._blocks(L, DQK, DV, torch.bfloat16, seq_len)
    blocks = dataclasses.replace(blocks, dot_dtype=tl.bfloat16)
    values = {"DQK": DQK, "DV": DV, "BLQ": blocks.BLQ, "BLC": blocks.BLC, "HAS_STARTS": documents,
              **blocks.kernel_constexprs(name)}
    if name == "step_kernel":
        values |= {"BK": DQK, "BV": 64}
    arg_names = getattr(KERNELS, name).arg_names
    return {key: value for key, value in values.items() if key in arg_names}


def compile_kernel(name: str, L: int, DQK: int, DV: int, multiples_of_16: tuple[str, ...], documents: bool = False):
    kernel = getattr(KERNELS, name)
    fixed = constexprs(name, L, DQK, DV, multiples_of_16, documents)

    def arg_type(arg: str) -> str:
        if arg in fixed:
            return "constexpr"
        if arg in ("S", "NC", "NVB", "NT"):
            return "i32"
        if arg in ("scale", "eps"):
            return "fp32"
        return "*bf16" if arg in ACTIVATIONS else "*fp64" if arg == "Bv" else "*i32" if arg == "First" else "*fp32"

    signature = {arg: arg_type(arg) for arg in kernel.arg_names}
    return compile_for_hopper(
        kernel, signature, fixed, num_warps=mlstm_triton.NUM_WARPS, multiples_of_16=multiples_of_16
    )


@functools.cache
def usage_of(name: str, L: int, DQK: int, DV: int, multiples_of_16: tuple[str, ...] = (), documents: bool = False):
    return resource_usage(compile_kernel(name, L, DQK, DV, multiples_of_16, documents))


@pytest.mark.parametrize("multiples_of_16", LENGTH_PATTERNS)
@pytest.mark.parametrize("L, DQK, DV", SHAPES)
@pytest.mark.parametrize("name, has_dots, _", LAUNCHES)
def test_kernel_compiles_for_hopper(name, has_dots, _, L, DQK, DV, multiples_of_16):
    usage = usage_of(name, L, DQK, DV, multiples_of_16)
    assert usage.local_bytes == 0, f"{name} uses local memory: {usage}"
    assert usage.registers <= 255
    assert usage.shared_bytes <= 227 * 1024  # Hopper's shared memory per block
    if has_dots:
        assert usage.hgmma > 0, f"{name} has matrix products but no HGMMA"


@pytest.mark.parametrize("multiples_of_16", LENGTH_PATTERNS)
@pytest.mark.parametrize("L, DQK, DV", SHAPES)
@pytest.mark.parametrize("name", [name for name, _, _ in LAUNCHES])
def test_no_register_spills(name, L, DQK, DV, multiples_of_16):
    usage = usage_of(name, L, DQK, DV, multiples_of_16)
    assert usage.stack_bytes == 0, f"{name} spills registers to a stack frame: {usage}"


@pytest.mark.parametrize("L, DQK, DV", [SHAPES[2], SHAPES[4]])
@pytest.mark.parametrize("name", [name for name, _, _ in LAUNCHES if name not in ("row_scales_kernel", "step_kernel")])
def test_document_variants_do_not_spill(name, L, DQK, DV):
    """Packed documents (HAS_STARTS) compile another variant of the chunkwise kernels: it must not spill either
    (one length pattern and the two shapes that hold the most registers, to keep the suite short)."""
    usage = usage_of(name, L, DQK, DV, ("S", "NC"), documents=True)
    assert usage.local_bytes == 0 and usage.stack_bytes == 0, f"{name} with documents spills: {usage}"
    assert usage.registers <= 255


class _AlignedLaunches:
    """Stands in for a kernel: each launch asserts that all its tensor arguments are 16-byte aligned."""

    def __init__(self, name: str, kernel, launched: set):
        self.name, self.kernel, self.launched = name, kernel, launched

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            misaligned = [index for index, x in enumerate(args) if torch.is_tensor(x) and x.data_ptr() % 16]
            assert not misaligned, f"{self.name} got arguments {misaligned} at addresses not 16-byte aligned"
            self.launched.add(self.name)
            return self.kernel[grid](*args, **kwargs)

        return launch


def test_launches_pass_only_aligned_tensors(monkeypatch):
    """The variant compiled above is the one every launch runs: inputs and output gradients that are views
    starting at misaligned addresses reach the kernels as aligned copies (forward, backward, step)."""
    kernels, launched = mlstm_triton.triton_kernels(mlstm_triton.__package__), set()
    checked = {name: _AlignedLaunches(name, getattr(kernels, name), launched) for name, _, _ in LAUNCHES}
    monkeypatch.setattr(mlstm_triton, "triton_kernels", lambda package: SimpleNamespace(**checked))

    def misaligned(*shape):  # a view one float past an aligned allocation
        view = torch.randn(torch.Size(shape).numel() + 1, device=DEVICE)[1:].view(shape)
        assert view.data_ptr() % 16
        return view

    B, NH, S, DQK, DV = 1, 2, 20, 16, 16
    q, k, v = (misaligned(B, NH, S, dim).requires_grad_() for dim in (DQK, DQK, DV))
    i, f = misaligned(B, NH, S), misaligned(B, NH, S)
    state = (misaligned(B, NH, DQK, DV), misaligned(B, NH, DQK), misaligned(B, NH))
    h, (C, n, _) = mlstm_triton.mlstm_triton(q, k, v, i, f, state, chunk_size=16, eps=1e-6)
    torch.autograd.grad((h, C, n), (q, k, v), (misaligned(*h.shape), misaligned(*C.shape), misaligned(*n.shape)))
    mlstm_triton.mlstm_triton_step(misaligned(B, NH, DQK), misaligned(B, NH, DQK), misaligned(B, NH, DV),
                                   misaligned(B, NH), misaligned(B, NH), state)
    assert launched == set(checked)


def resource_table() -> str:
    rows = []
    for multiples_of_16, lengths in (((), "any S"), (("S", "NC"), "S, NC multiples of 16")):
        for L, DQK, DV in SHAPES:
            for name, _, _ in LAUNCHES:
                rows.append((f"L={L} DQK={DQK} DV={DV}, {lengths}", usage_of(name, L, DQK, DV, multiples_of_16)))
    return markdown_table(rows)


if __name__ == "__main__":
    print(resource_table())
