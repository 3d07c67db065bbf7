"""Helpers shared by the mLSTM and sLSTM dispatchers: backend lookup, shape checks, compute dtype.

DESIGN.md §8: every backend of a cell keeps one signature; `auto` resolves by device; states are float32
whatever the activation dtype (float64 inputs keep float64 so a reference can run exactly).
"""

from collections.abc import Callable, Mapping, Sequence

import torch


def select_backend(registry: Mapping[str, Callable], backend: str, auto: str) -> Callable:
    """Return registry[backend], with "auto" meaning registry[auto].

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    name = auto if backend == "auto" else backend
    if name not in registry:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {sorted(registry)} and 'auto'")
    return registry[name]


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int], letters: str) -> None:
    """Raise ValueError unless tensor.shape == expected; `letters` names the dimensions, e.g. "(B, NH, S)"."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {letters} = {tuple(expected)}, got {tuple(tensor.shape)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute (and keep states) in float32, or in float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
