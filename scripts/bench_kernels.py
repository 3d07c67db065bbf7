"""Benchmark of the cell kernels: forward and forward+backward time and peak memory (DESIGN.md §8, §9).

One function per kernel family (`bench_mlstm` here, `bench_slstm` from scripts/bench_slstm.py), each
returning rows; the script prints them as a markdown table and writes them as JSON.

mLSTM, at a fixed number of tokens per batch (B = tokens / S): the Triton backend (bf16 activations,
float32 states), the native PyTorch chunkwise form (float32 compute), the official mlstm_kernels TFLA
Triton kernel (where importable, GPU only) and causal SDPA attention (bf16) as the Transformer baseline.

    python scripts/bench_kernels.py                    # GPU: 65,536 tokens, S 512..65,536, NH 16, DQK 128, DV 256
                                                       # (ours at chunk 64, 128 and 256, the others at 64)
    python scripts/bench_kernels.py --smoke            # CPU: a reduced size, ours in the Triton interpreter, < 1 min
    python scripts/bench_kernels.py --family slstm     # the sLSTM benchmark

Notation: B batch, S sequence length, NH heads, DQK key/query head dim, DV value head dim, L chunk length.
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from bench_slstm import bench_slstm, markdown, measure  # on sys.path when run as a script; sets TRITON_INTERPRET

from xlstm_lm.kernels import mlstm
from xlstm_lm.kernels.mlstm.triton import mlstm_triton


def _tfla_mlstm(chunk_size: int) -> Callable | None:
    """mlstm_kernels' chunkwise TFLA Triton kernel as a function of (q, k, v, i, f), or None if not installed."""
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError:
        return None
    kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")
    return lambda q, k, v, i, f: kernel(q, k, v, i, f, chunk_size=chunk_size)


def _triton_mlstm(chunk_size: int) -> Callable:
    """Our Triton backend as a function of (q, k, v, i, f), called directly: the dispatcher would upcast bf16."""

    def triton(q, k, v, i, f):
        B, NH, _, DQK = q.shape
        state = (q.new_zeros((B, NH, DQK, v.shape[-1]), dtype=torch.float32),
                 q.new_zeros((B, NH, DQK), dtype=torch.float32), q.new_zeros((B, NH), dtype=torch.float32))
        return mlstm_triton(q, k, v, i, f, state, chunk_size=chunk_size, eps=1e-6)[0]

    return triton


def mlstm_providers(
    device: torch.device, chunk_size: int, triton_chunk_sizes: tuple[int, ...] = ()
) -> dict[str, Callable]:
    """The mLSTM implementations to time, each a function of (q, k, v, i, f) returning h: ours at chunk_size
    and at each of triton_chunk_sizes (named "triton L<size>"), TFLA (GPU only) at the same sizes ("tfla L<size>"),
    the others at chunk_size. Ours runs on a GPU and, on a CPU, in the Triton interpreter (a smoke test of the
    benchmark, no timing worth reporting)."""
    sizes = dict.fromkeys((chunk_size, *triton_chunk_sizes))
    providers = {"native": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="native", chunk_size=chunk_size)}
    if device.type == "cuda" or triton.knobs.runtime.interpret:
        providers = {f"triton L{size}": _triton_mlstm(size) for size in sizes} | providers
    if device.type == "cuda":
        tfla = {f"tfla L{size}": _tfla_mlstm(size) for size in sizes}
        providers |= {name: run for name, run in tfla.items() if run is not None}  # None: not installed
    providers["sdpa"] = lambda q, k, v, i, f: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return providers


def bench_mlstm(
    tokens: int = 65536, seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
    heads: int = 16, dqk: int = 128, dv: int = 256, chunk_size: int = 64, triton_chunk_sizes: tuple[int, ...] = (),
    dtype: torch.dtype = torch.bfloat16, device: str | None = None, repeats: int = 5,
) -> list[dict]:
    """Time the mLSTM implementations on random inputs with realistic gates (DESIGN.md §9).

    Args:
        tokens: tokens per batch; B = tokens / S for each S in seq_lens.
        heads, dqk, dv: NH, DQK, DV.
        chunk_size: L of the chunkwise kernels.
        triton_chunk_sizes: further L at which to time our Triton kernels (GPU only).
        dtype: activation dtype of q, k, v (gates and states stay float32).
        device: "cuda" or "cpu"; None picks cuda when present.
        repeats: timed runs per measurement (the median is reported).

    Returns:
        One dict per (provider, S): provider, B, S, NH, DQK, DV, fwd_ms, fwd_bwd_ms, fwd_MiB, fwd_bwd_MiB
        (memory above the inputs, None on a CPU), and error (None, or why the provider failed: `measure`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for S in seq_lens:
        B = max(1, tokens // S)
        q, k = (torch.randn(B, heads, S, dqk, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
        v = torch.randn(B, heads, S, dv, device=device, dtype=dtype, requires_grad=True)
        i = (-10 * torch.rand(B, heads, S, device=device)).requires_grad_()  # realistic gates (DESIGN.md §9)
        f = (3 + 3 * torch.rand(B, heads, S, device=device)).requires_grad_()
        grad_h = torch.randn(B, heads, S, dv, device=device, dtype=dtype)
        for name, run in mlstm_providers(device, chunk_size, triton_chunk_sizes).items():

            def forward():
                with torch.no_grad():
                    run(q, k, v, i, f)

            def forward_backward():
                run(q, k, v, i, f).backward(grad_h)

            rows.append({"provider": name, "B": B, "S": S, "NH": heads, "DQK": dqk, "DV": dv,
                         **measure(forward, forward_backward, repeats, device)})
            for x in (q, k, v, i, f):
                x.grad = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["mlstm", "slstm"], default="mlstm")
    parser.add_argument("--smoke", action="store_true", help="a reduced size that runs in under a minute on a CPU")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per batch (B = tokens / S)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2**p for p in range(9, 17)])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dqk", type=int, default=128)
    parser.add_argument("--dv", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--triton-chunk-sizes", type=int, nargs="*", default=[128, 256],
                        help="further chunk sizes at which to time the Triton mLSTM kernels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/bench_kernels.json"),
                        help="where to write the rows")
    args = parser.parse_args()
    if args.family == "slstm":
        rows = bench_slstm(batch=2, heads=2, head_dims=(16,), seq_lens=(16,), dtype=torch.float32, repeats=1) \
            if args.smoke else bench_slstm(repeats=args.repeats)
    elif args.smoke:
        rows = bench_mlstm(tokens=1024, seq_lens=(256, 512), heads=2, dqk=32, dv=64, chunk_size=64,
                           dtype=torch.float32, device="cpu", repeats=2)
    else:
        rows = bench_mlstm(tokens=args.tokens, seq_lens=tuple(args.seq_lens), heads=args.heads, dqk=args.dqk,
                           dv=args.dv, chunk_size=args.chunk_size, triton_chunk_sizes=tuple(args.triton_chunk_sizes),
                           repeats=args.repeats)
    print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
