"""What the mLSTM and sLSTM dispatchers share: backend records, `auto` resolved once, shape checks, dtypes.

DESIGN.md §8: every backend of a cell keeps one signature; states are float32 whatever the activation dtype
(float64 inputs keep float64 so a reference can run exactly). A `Backend` says what an implementation runs
on; a `BackendChoice` turns a name (or `auto`) into the backend for any input, decided once when it is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Backend:
    """One implementation of a cell. Every backend takes any head size (the Triton kernels tile and mask
    them), so devices and dtypes are what tells them apart.

    Attributes:
        name: its key in the cell's registry.
        about: what it is, in a few words (logged when `auto` chooses it).
        sequence: the cell's function over a sequence (the signature of the cell's dispatcher docs).
        step: one time step, for generation.
        devices: device types it runs on. The Triton backends also run CPU tensors under TRITON_INTERPRET=1
            (tests), which `auto` never chooses.
        dtypes: activation dtypes it takes.
        as_is: activation dtypes it reads as they are (bf16 matrix products); others reach it in the
            compute dtype.
    """

    name: str
    about: str
    sequence: Callable
    step: Callable
    devices: frozenset = frozenset(DEVICE_TYPES)
    dtypes: frozenset = frozenset(FLOAT_DTYPES)
    as_is: frozenset = frozenset()

    def runs(self, device_type: str, dtype: torch.dtype) -> bool:
        return device_type in self.devices and dtype in self.dtypes


class BackendChoice:
    """A backend name resolved for every device type and dtype an input may have, once.

    `auto` takes, for each (device type, dtype), the first backend of `preference` that runs there; a named
    backend serves every input (and raises in its kernel where it cannot run).
    """

    def __init__(self, cell: str, registry: Mapping[str, Backend], name: str, preference: Sequence[str]):
        if name != "auto" and name not in registry:
            raise ValueError(f"unknown backend {name!r}; valid backends: {sorted(registry)} and 'auto'")
        self.cell, self.name = cell, name
        self.table: dict[tuple[str, torch.dtype], Backend] = {}
        if name == "auto":
            self.table = {(device, dtype): next(registry[key] for key in preference if registry[key].runs(device, dtype))
                          for device in DEVICE_TYPES for dtype in FLOAT_DTYPES}
        self.default = registry[preference[-1] if name == "auto" else name]  # auto's last preference runs anywhere

    def for_input(self, x: torch.Tensor) -> Backend:
        """The backend that runs an input on x's device and in x's dtype."""
        return self.table.get((x.device.type, x.dtype), self.default)

    def describe(self) -> str:
        """What was chosen and why, for the log."""
        if self.name != "auto":
            return f"{self.cell} backend {self.name}: {self.default.about}"
        parts = []
        for backend in dict.fromkeys(self.table.values()):  # each chosen backend once, in table order
            where = []
            for device in DEVICE_TYPES:
                dtypes = [str(dtype).removeprefix("torch.") for dtype in FLOAT_DTYPES if self.table[device, dtype] is backend]
                if dtypes:
                    where.append(device if len(dtypes) == len(FLOAT_DTYPES) else f"{device} {'/'.join(dtypes)}")
            parts.append(f"{backend.name} ({backend.about}) on {', '.join(where)}")
        return f"{self.cell} backend auto: " + "; ".join(parts)

    def __repr__(self) -> str:
        return f"BackendChoice({self.cell}, {self.name!r})"


def triton_kernels(package: str) -> ModuleType:
    """The @triton.jit module (`<package>.triton_kernels`) of a cell, imported at its first launch.

    Note: Triton decides between compiling and interpreting (TRITON_INTERPRET=1) when @triton.jit decorates
    a kernel, so the kernels are imported at the first launch, not when the package is imported: tests on a
    machine without a GPU set the variable before any kernel runs.
    """
    return importlib.import_module(f"{package}.triton_kernels")


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int], letters: str) -> None:
    """Raise ValueError unless tensor.shape == expected; `letters` names the dimensions, e.g. "(B, NH, S)"."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {letters} = {tuple(expected)}, got {tuple(tensor.shape)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute (and keep states) in float32, or in float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
