"""Gate gradients at extreme gates (±30) in float32 against float64: worst relative error over fresh draws.

Each draw: B 1, NH 2, DQK 16, DV 32, ĩ and f̃ uniform in [-30, 30] (DESIGN.md §9), no initial state; the loss
Σ (out + offset)² over h (case "S 1") or over h, C_S, n_S (case "S 300"). Ours against our float64 reference;
the official parallel--native_stablef_autograd (where installed) against itself in float64: its m carries a
gradient, so a saturated step's dĩ is 0 there rather than our eps-sized term.

    python scripts/gate_gradient_accuracy.py [--draws 10]   # Triton under the interpreter without a GPU

Notation: S sequence length, L chunk length.
"""

import argparse
import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernels are imported (first launch)

import torch

from xlstm_lm.kernels import mlstm

CASES = [("S 1, L 16, loss on h", 1, 16, ("native", "triton", "peer")),
         ("S 300, L 256", 300, 256, ("native", "triton"))]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual - expected‖ / ‖expected‖; the absolute error where expected is zero (df̃ at S 1)."""
    error, scale = (actual.double() - expected.double()).norm().item(), expected.double().norm().item()
    return error / scale if scale > 0 else error


def gradients(backend: str, inputs: list[torch.Tensor], offsets: list[torch.Tensor], dtype: torch.dtype, L: int):
    """Gradients of q, k, v, ĩ, f̃ (float32 values, computed in dtype) under the offset-quadratic loss."""
    leaves = [x.float().to(dtype).requires_grad_(True) for x in inputs]
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    if backend == "peer":
        from mlstm_kernels.torch import get_mlstm_kernel

        outputs = (get_mlstm_kernel("parallel--native_stablef_autograd")(*leaves, eps=1e-6),)
    else:
        h, (C, n, _) = mlstm(*(x.to(device) for x in leaves), backend=backend, chunk_size=L, return_state=True)
        outputs = (h.cpu(), C.cpu(), n.cpu())[:len(offsets)]
    sum(((out.double() + offset) ** 2).sum() for out, offset in zip(outputs, offsets)).backward()
    return [x.grad for x in leaves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    print("| case | backend | dĩ | df̃ | dq, dk, dv |\n| --- | --- | --- | --- | --- |")
    for name, S, L, backends in CASES:
        worst = {backend: [0.0, 0.0, 0.0] for backend in backends}
        for draw in range(args.draws):
            g = torch.Generator().manual_seed(draw)
            inputs = [torch.randn(1, 2, S, d, generator=g, dtype=torch.float64) for d in (16, 16, 32)]
            inputs += [-30 + 60 * torch.rand(1, 2, S, generator=g, dtype=torch.float64) for _ in range(2)]
            shapes = [(1, 2, S, 32)] if S == 1 else [(1, 2, S, 32), (1, 2, 16, 32), (1, 2, 16)]
            offsets = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]
            for backend in backends:
                reference = gradients("peer" if backend == "peer" else "reference", inputs, offsets, torch.float64, L)
                errors = [relative_error(x, y) for x, y in zip(gradients(backend, inputs, offsets, torch.float32, L),
                                                               reference)]
                worst[backend] = [max(worst[backend][0], errors[3]), max(worst[backend][1], errors[4]),
                                  max(worst[backend][2], *errors[:3])]
        for backend, (di, df, dqkv) in worst.items():
            print(f"| {name} | {backend} | {di:.1e} | {df:.1e} | {dqkv:.1e} |", flush=True)


if __name__ == "__main__":
    main()
