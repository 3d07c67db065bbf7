"""Benchmark of the sLSTM backends: forward and forward+backward time and peak memory (DESIGN.md §5, §9).

Compares the fused Triton kernels with the native PyTorch loop (one matmul launch per step) and, on a GPU
where the `flashrnn` package is importable, with the official FlashRNN fused sLSTM. Prints a markdown
table; `bench_slstm` returns the rows for scripts that collect several benchmarks.

    python scripts/bench_slstm.py            # GPU: B 16, NH 4, DH 64/128 (R on chip), 256 (wide), S 256..4096, bf16
    python scripts/bench_slstm.py --smoke    # CPU: a tiny size, Triton in the interpreter

Notation: B batch, S sequence length, NH heads, DH head dim.
"""

import argparse
import os
import statistics
import time
from functools import partial

import torch

if not torch.cuda.is_available():  # before triton is imported (DESIGN.md §9)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from xlstm_lm.kernels import slstm  # noqa: E402


def _flashrnn_slstm():
    """The official FlashRNN sLSTM as a function of (gates_x, R, b), or None where it cannot run."""
    try:
        from flashrnn import flashrnn
    except ImportError:
        return None

    def run(gates_x, R, b):  # flashrnn's layout: Wx (B, S, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH)
        return flashrnn(gates_x, R, b, function="slstm", backend="cuda_fused", dtype="bfloat16")[0]

    return run


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, float | None]:
    """Median wall time in ms over `repeats` runs after one warm-up, and peak memory in MiB (GPU only)."""
    fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def measure(forward, forward_backward, repeats: int, device: torch.device) -> dict:
    """The time and memory columns of one row (`_timed` of the forward and of forward+backward) and its error:
    None, or why the implementation failed (out of memory, a size or dtype it does not take, a peer package
    that does not build), so that one failure leaves a row instead of ending the benchmark."""
    try:
        fwd_ms, fwd_mib = _timed(forward, repeats, device)
        fwd_bwd_ms, fwd_bwd_mib = _timed(forward_backward, repeats, device)
    except Exception as error:  # any failure of a provider: recorded in its row
        return {"fwd_ms": None, "fwd_bwd_ms": None, "fwd_MiB": None, "fwd_bwd_MiB": None,
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''}"}
    return {"fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "fwd_MiB": fwd_mib, "fwd_bwd_MiB": fwd_bwd_mib, "error": None}


def bench_slstm(
    batch: int = 16, heads: int = 4, head_dims: tuple[int, ...] = (64, 128, 256),
    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048, 4096), dtype: torch.dtype = torch.bfloat16,
    device: str | None = None, repeats: int = 5, backends: tuple[str, ...] = ("triton", "native", "flashrnn"),
) -> list[dict]:
    """Time the sLSTM backends on random inputs with realistic gates.

    Args:
        batch, heads, head_dims, seq_lens: the sizes B, NH, DH (each), S (each).
        dtype: activation dtype of gates_x (states and R stay float32).
        device: "cuda" or "cpu"; None picks cuda when present.
        repeats: timed runs per measurement (the median is reported).
        backends: which to run, of "triton", "native" and "flashrnn" (skipped where it cannot run).

    Returns:
        One dict per (backend, DH, S): backend, B, NH, DH, S, fwd_ms, fwd_bwd_ms, fwd_MiB, fwd_bwd_MiB
        (memory above the inputs, None on a CPU) and error (see `measure`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs = {name: partial(slstm, backend=name) for name in ("triton", "native") if name in backends}
    flashrnn = _flashrnn_slstm() if device.type == "cuda" and "flashrnn" in backends else None
    if flashrnn is not None:
        runs["flashrnn"] = flashrnn
    rows = []
    for DH in head_dims:
        for S in seq_lens:
            gates_x = torch.randn(batch, S, 4, heads, DH, device=device)
            gates_x[:, :, 0] -= 5  # input gates around -5, forget gates around +4 (DESIGN.md §9)
            gates_x[:, :, 1] += 4
            gates_x = gates_x.to(dtype).requires_grad_()
            R = (torch.randn(4, heads, DH, DH, device=device) * DH**-0.5).requires_grad_()
            b = torch.zeros(4, heads, DH, device=device, requires_grad=True)
            for name, run in runs.items():

                def forward():
                    with torch.no_grad():
                        run(gates_x, R, b)

                def forward_backward():
                    run(gates_x, R, b).float().square().sum().backward()

                rows.append({"backend": name, "B": batch, "NH": heads, "DH": DH, "S": S,
                             **measure(forward, forward_backward, repeats, device)})
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else "-" if row[c] is None else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny size that runs in seconds on a CPU")
    parser.add_argument("--backends", nargs="+", default=["triton", "native", "flashrnn"])
    args = parser.parse_args()
    if args.smoke:
        rows = bench_slstm(batch=2, heads=2, head_dims=(16,), seq_lens=(16,), dtype=torch.float32, repeats=1,
                           backends=args.backends)
    else:
        rows = bench_slstm(backends=args.backends)
    print(markdown(rows))


if __name__ == "__main__":
    main()
