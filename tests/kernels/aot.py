"""Ahead-of-time checks of Triton kernels for Hopper on a machine without a GPU (DESIGN.md §13).

`compile_for_hopper` compiles one @triton.jit kernel for sm_90 at given block shapes, in the variant a
launch on 16-byte aligned tensors compiles; `resource_usage` reads registers, shared memory, stack and
local memory (spills) of the cubin with the `cuobjdump` that ships with Triton, and counts the HGMMA
instructions (Hopper warp-group matrix products) in the SASS that `nvdisasm` prints. `markdown_table`
formats the results for docs/benchmarks.md. Shared by the mLSTM and sLSTM kernel tests.
"""

import contextlib
import importlib.util
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)  # (backend, compute capability, warp size)
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@contextlib.contextmanager
def _compiled_triton():
    """Triton reads TRITON_INTERPRET when @triton.jit decorates; switch it off for a fresh import."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def jit_module(name: str) -> ModuleType:
    """A fresh copy of the kernel module `name` whose kernels compile (are not interpreted), whatever
    TRITON_INTERPRET says; the copy is not put in sys.modules."""
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    with _compiled_triton():
        spec.loader.exec_module(module)
    return module


def compile_for_hopper(
    kernel, signature: dict[str, str], constexprs: dict, num_warps: int = 4, num_stages: int = 3,
    multiples_of_16: tuple[str, ...] = (),
):
    """Compile `kernel` for sm_90. signature maps every argument to a Triton type ("*bf16", "i32",
    "fp32") or "constexpr"; constexprs gives the values of the latter. Returns the compiled kernel (its
    .asm holds "ttgir", "ptx", "cubin"; .metadata.shared the shared memory in bytes).

    Note: a launch on a GPU compiles one variant of a kernel per pattern of its arguments: a tensor at a
    16-byte aligned address (every one torch allocates) and an integer that is a multiple of 16 are
    marked divisible by 16, which lets loads be vectorized (without it every element gets its own 64-bit
    address, and the matrix kernels run out of registers). This compiles the variant for aligned
    pointers and for the integer arguments named in multiples_of_16 being multiples of 16.
    """
    attrs = {
        (index,): [["tt.divisibility", 16]] for index, arg in enumerate(kernel.arg_names)
        if signature[arg].startswith("*") or arg in multiples_of_16
    }
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})


@dataclass
class ResourceUsage:
    kernel: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    local_bytes: int  # spills live here
    hgmma: int  # HGMMA instructions in the SASS


def resource_usage(compiled) -> ResourceUsage:
    """Registers, shared/stack/local memory and the HGMMA count of a kernel from `compile_for_hopper`."""
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = _run(NVIDIA_BIN / "cuobjdump", "--dump-resource-usage", cubin)
        sass = _run(NVIDIA_BIN / "nvdisasm", cubin)

    def field(name: str) -> int:
        match = re.search(rf"\b{name}:\s*(\d+)", usage)
        assert match, f"no {name} in cuobjdump output:\n{usage}"
        return int(match.group(1))

    return ResourceUsage(
        kernel=compiled.name, registers=field("REG"), shared_bytes=max(field("SHARED"), compiled.metadata.shared),
        stack_bytes=field("STACK"), local_bytes=field("LOCAL"), hgmma=len(re.findall(r"\bHGMMA\.", sass)),
    )


def _run(*command) -> str:
    return subprocess.run([str(part) for part in command], check=True, capture_output=True, text=True).stdout


def markdown_table(rows: list[tuple[str, ResourceUsage]]) -> str:
    """A markdown table, one row per (configuration, usage)."""
    lines = ["| kernel | configuration | registers | shared memory (KiB) | stack (B) | local/spills (B) | HGMMA |",
             "|---|---|---|---|---|---|---|"]
    for config, usage in rows:
        lines.append(f"| {usage.kernel} | {config} | {usage.registers} | {usage.shared_bytes / 1024:.1f} | "
                     f"{usage.stack_bytes} | {usage.local_bytes} | {usage.hgmma} |")
    return "\n".join(lines)
