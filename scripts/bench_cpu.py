"""CPU benchmarks against the official xLSTM packages (issue 7): five sub-benchmarks, each printing a
markdown table and writing its rows as JSON (`<out-dir>/cpu_<name>.json`).

    mlstm    mLSTM cell, fp32, B 1, NH 4, DQK = DV = 64, S 256..16,384, forward and forward+backward: our
             native chunkwise form against mlstm_kernels' chunkwise--native_autograd, chunkwise--native_custbw
             and the quadratic parallel--native_stablef_autograd (skipped where it would not fit in memory),
             each with the max abs difference of h and of the gradients to float64 and the peak memory
    slstm    sLSTM layer forward+backward, B 8, NH 4, DH 64, S 256..2048: our layer against the official
             xlstm sLSTM layer (backend "vanilla"); at the cell level ours against flashrnn "vanilla_fwbw"
    model    training step (forward, backward, AdamW), fp32, batch 8 x 512: our xLSTM[7:1] size tiny against
             the official xLSTMLMModel with the same widths, blocks, heads and sLSTM positions, each in its
             own process; with --compile also ours under torch.compile
    context  forward pass at contexts 1k..64k: tokens/s and peak memory of xLSTM[7:1] (fed in pieces with
             the state carried) and the Llama baseline of the same size; plotted to --plot
    mfu      FLOP/s of our tiny training step (xlstm_lm.training.flops) over the FLOP/s of a large fp32
             matmul measured in the same run
    sizes    on a GPU: training-step tokens/s and MFU of our xLSTM[7:1] at size=125m and 350m, bf16 autocast,
             Triton kernels, batch 8 x 2048 (rows say "skipped" without a GPU; --smoke runs the same code
             on the CPU at tiny widths)

    OMP_NUM_THREADS=2 python scripts/bench_cpu.py                 # all of them (about 25 minutes on 1 core)
    OMP_NUM_THREADS=1 python scripts/bench_cpu.py --only mlstm    # some of them
    python scripts/bench_cpu.py --smoke                           # tiny sizes, seconds each

Peak memory is the high-water mark of the tensors PyTorch allocates during one call (from the profiler's
memory events), so it excludes the inputs and the Python process. The official packages are optional
(`pip install -e ".[peers]"`); rows of a package that is not installed are left out with a note.

Notation: B batch, S sequence length, NH heads, DQK/DV mLSTM head dims, DH sLSTM head dim, D width.
"""

import argparse
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from xlstm_lm.kernels import mlstm, slstm
from xlstm_lm.models import LanguageModel, LlamaConfig, LlamaLM, XLSTMConfig, XLSTMLM
from xlstm_lm.models.slstm import SLSTMLayer
from xlstm_lm.models.components import round_up
from xlstm_lm.training.flops import peak_flops, training_flops_per_token

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_MLSTM = ("chunkwise--native_autograd", "chunkwise--native_custbw", "parallel--native_stablef_autograd")


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn in ms over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """High-water mark in MiB of the CPU tensors allocated while fn runs (allocations minus frees, in order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                         if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in allocations:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def official_mlstm_kernels() -> dict[str, Callable] | None:
    """mlstm_kernels' PyTorch kernels by name, or None when the package is not installed."""
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError:
        return None
    return {name: get_mlstm_kernel(name) for name in OFFICIAL_MLSTM}


def max_abs_diff(tensors: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    return max((t.double() - r).abs().max().item() for t, r in zip(tensors, references, strict=True))


def bench_mlstm(seq_lens: tuple[int, ...], heads: int = 4, head_dim: int = 64, chunk_size: int = 64,
                repeats: int = 3, max_quadratic_gib: float = 8.0) -> list[dict]:
    """mLSTM cell timings (module docstring), with the accuracy of each provider against float64.

    The float64 outputs come from our recurrent form (one step at a time, an independent second opinion),
    the float64 gradients from our chunkwise form in float64 (tested equal to autograd of the quadratic
    reference to rounding, tests/kernels/test_mlstm_chunkwise_backward.py).
    """
    providers = {"ours (native chunkwise)": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="native",
                                                                         chunk_size=chunk_size)}
    official = official_mlstm_kernels()
    if official is None:
        print("note: mlstm_kernels is not installed: install the peers extra for the official rows")
    for name, kernel in (official or {}).items():
        providers[name] = lambda q, k, v, i, f, kernel=kernel: kernel(q, k, v, i, f, chunk_size=chunk_size)
    rows = []
    for S in seq_lens:
        generator = torch.Generator().manual_seed(S)
        q, k, v = (torch.randn(1, heads, S, head_dim, generator=generator) for _ in range(3))
        i = -10 * torch.rand(1, heads, S, generator=generator)  # realistic gates (DESIGN.md §9)
        f = 3 + 3 * torch.rand(1, heads, S, generator=generator)
        grad_h = torch.randn(1, heads, S, head_dim, generator=generator)
        inputs64 = [x.double() for x in (q, k, v, i, f)]
        with torch.no_grad():
            h64 = mlstm(*inputs64, backend="recurrent")
        leaves64 = [x.requires_grad_() for x in inputs64]
        grads64 = torch.autograd.grad(mlstm(*leaves64, backend="native", chunk_size=chunk_size), leaves64,
                                      grad_h.double())
        for name, run in providers.items():
            row = {"provider": name, "S": S, "NH": heads, "DQK": head_dim, "DV": head_dim, "threads": torch.get_num_threads()}
            # the parallel form keeps about a dozen (NH, S, S) float32 buffers for its backward
            if name.startswith("parallel") and 12 * heads * S * S * 4 > max_quadratic_gib * 2**30:
                rows.append(row | {"skipped": f"quadratic memory over {max_quadratic_gib} GiB"})
                continue
            leaves = [x.clone().requires_grad_() for x in (q, k, v, i, f)]

            def forward():
                with torch.no_grad():
                    return run(*leaves)

            def forward_backward():
                return torch.autograd.grad(run(*leaves), leaves, grad_h)

            row |= {"fwd_ms": timed(forward, repeats), "fwd_bwd_ms": timed(forward_backward, repeats),
                    "h_max_abs_diff": max_abs_diff([forward()], [h64]),
                    "grad_max_abs_diff": max_abs_diff(list(forward_backward()), list(grads64)),
                    "fwd_bwd_peak_MiB": peak_memory_mib(forward_backward)}
            rows.append(row)
    return rows


def official_slstm_layer(dim: int, heads: int) -> torch.nn.Module | None:
    """The official xlstm sLSTM layer with the pure-PyTorch backend, or None when xlstm is not installed."""
    try:
        from xlstm import sLSTMLayer, sLSTMLayerConfig
    except ImportError:
        return None
    return sLSTMLayer(sLSTMLayerConfig(embedding_dim=dim, num_heads=heads, backend="vanilla", conv1d_kernel_size=4))


def flashrnn_vanilla_fwbw() -> Callable | None:
    """flashrnn's sLSTM with its PyTorch forward/backward as a function of (gates_x, R, b), or None."""
    try:
        from flashrnn import flashrnn
    except ImportError:
        return None
    return lambda gates_x, R, b: flashrnn(gates_x, R, b, function="slstm", backend="vanilla_fwbw", dtype="float32")[0]


def bench_slstm(seq_lens: tuple[int, ...], batch: int = 8, heads: int = 4, head_dim: int = 64,
                repeats: int = 3) -> list[dict]:
    """sLSTM forward+backward timings (module docstring): layers with the same width and heads, and cells."""
    dim = heads * head_dim
    ours = SLSTMLayer(dim, heads)
    ours.init_weights(0, 1)
    layers = {"ours (layer)": lambda x: ours(x)[0]}
    official = official_slstm_layer(dim, heads)
    if official is None:
        print("note: xlstm is not installed: install the peers extra for the official rows")
    else:
        layers["official xlstm vanilla (layer)"] = official
    cells = {"ours (cell)": lambda gates_x, R, b: slstm(gates_x, R, b)}
    flashrnn = flashrnn_vanilla_fwbw()
    if flashrnn is None:
        print("note: flashrnn is not installed: install the peers extra for the flashrnn row")
    else:
        cells["flashrnn vanilla_fwbw (cell)"] = flashrnn
    rows = []
    for S in seq_lens:
        generator = torch.Generator().manual_seed(S)
        x = torch.randn(batch, S, dim, generator=generator, requires_grad=True)
        gates_x = torch.randn(batch, S, 4, heads, head_dim, generator=generator)
        gates_x[:, :, 0] -= 5  # input gates around -5, forget gates around +4 (DESIGN.md §9)
        gates_x[:, :, 1] += 4
        gates_x.requires_grad_()
        R = (torch.randn(4, heads, head_dim, head_dim, generator=generator) * head_dim**-0.5).requires_grad_()
        b = torch.zeros(4, heads, head_dim, requires_grad=True)
        runs = {name: (lambda layer=layer: layer(x)) for name, layer in layers.items()}
        runs |= {name: (lambda cell=cell: cell(gates_x, R, b)) for name, cell in cells.items()}
        for name, run in runs.items():
            slow = name.startswith("official")  # seconds per call: one timed run
            ms = timed(lambda run=run: run().square().sum().backward(), 1 if slow else repeats)
            rows.append({"provider": name, "B": batch, "NH": heads, "DH": head_dim, "S": S,
                         "threads": torch.get_num_threads(), "fwd_bwd_ms": ms})
    return rows


def our_xlstm_7_1(vocab_size: int, dim: int, blocks: int, heads: int) -> XLSTMLM:
    return XLSTMLM(XLSTMConfig(vocab_size=vocab_size, embedding_dim=dim, num_blocks=blocks, num_heads=heads,
                               ratio="7:1"))


def official_xlstm_lm(ours: XLSTMLM, context_length: int) -> torch.nn.Module | None:
    """The official xLSTMLMModel with our model's widths, blocks, heads and sLSTM positions (vanilla sLSTM
    backend, the one that runs on a CPU), or None when xlstm is not installed."""
    try:
        from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,
                           sLSTMLayerConfig, xLSTMLMModel, xLSTMLMModelConfig)
    except ImportError:
        return None
    config = ours.config
    model = xLSTMLMModel(xLSTMLMModelConfig(
        vocab_size=config.vocab_size, embedding_dim=config.embedding_dim, num_blocks=config.num_blocks,
        context_length=context_length, slstm_at=list(config.slstm_positions),
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(
            num_heads=config.num_heads, conv1d_kernel_size=config.conv_kernel,
            qkv_proj_blocksize=config.qkv_block_size, proj_factor=config.proj_factor)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=config.num_heads, conv1d_kernel_size=config.conv_kernel,
                                   bias_init="powerlaw_blockdependent"),
            feedforward=FeedForwardConfig(proj_factor=config.slstm_ffn_factor, act_fn="gelu")),
    ))
    model.reset_parameters()
    return model


def training_step_ms(model: torch.nn.Module, batch: int, seq_len: int, vocab_size: int, steps: int) -> float:
    """Median ms of forward + cross-entropy + backward + AdamW step on random tokens; our models compute the
    loss as our trainer does (from the features, `labels=`), others from their logits."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def step():
        if isinstance(model, LanguageModel):
            loss = model(tokens[:, :-1], labels=tokens[:, 1:])
        else:
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, steps)


def _model_row(kind: str, batch: int, seq_len: int, vocab_size: int, dim: int, blocks: int, heads: int,
               steps: int) -> dict:
    """Build one model ("ours", "ours compiled" or "official") and time its training step; run in a fresh
    process, so that what one model left in the allocator does not slow the next (the official model's
    step took 25% longer when it ran after ours in the same process)."""
    torch.manual_seed(0)
    ours = our_xlstm_7_1(vocab_size, dim, blocks, heads)
    model = official_xlstm_lm(ours, seq_len) if kind == "official" else ours
    row = {"model": f"{kind} xLSTMLMModel" if kind == "official" else f"{kind} xlstm_7_1"}
    if kind == "ours compiled":
        model.compile(dynamic=False)  # in place, as trainer.compile does: still a LanguageModel (labels= loss)
        tokens = torch.randint(vocab_size, (batch, seq_len + 1))
        start = time.perf_counter()
        model(tokens[:, :-1], labels=tokens[:, 1:]).backward()  # compiles the forward and the backward
        row["compile_s"] = time.perf_counter() - start
    ms = training_step_ms(model, batch, seq_len, vocab_size, steps)
    return {**row, "parameters": sum(p.numel() for p in model.parameters()),
            "slstm_at": list(ours.config.slstm_positions), "B": batch, "S": seq_len,
            "threads": torch.get_num_threads(), "step_ms": ms, "tokens_per_s": batch * seq_len / ms * 1e3}


def bench_model(batch: int = 8, seq_len: int = 512, vocab_size: int = 8192, dim: int = 256, blocks: int = 8,
                heads: int = 4, steps: int = 5, compiled: bool = False) -> list[dict]:
    """Training-step tokens/s of our xLSTM[7:1] (optionally also under torch.compile) and of the official
    model built to match it, each measured in its own process."""
    ours = our_xlstm_7_1(vocab_size, dim, blocks, heads)
    kinds = ["ours"] + (["ours compiled"] if compiled else [])
    official = official_xlstm_lm(ours, seq_len)
    if official is None:
        print("note: xlstm is not installed: install the peers extra for the official row")
    else:
        kinds.append("official")
        counts = [sum(p.numel() for p in model.parameters()) for model in (ours, official)]
        if abs(counts[1] / counts[0] - 1) > 0.01:
            raise RuntimeError(f"parameter counts differ by over 1% (ours, official: {counts}); the official "
                               "model is not built like ours, fix official_xlstm_lm before comparing speed")
    rows = []
    for kind in kinds:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh_process:
            rows.append(fresh_process.submit(_model_row, kind, batch, seq_len, vocab_size, dim, blocks, heads,
                                             steps).result())
    return rows


def bench_context(contexts: tuple[int, ...], piece: int = 4096, vocab_size: int = 8192, dim: int = 256,
                  blocks: int = 8, heads: int = 4) -> list[dict]:
    """Forward tokens/s and peak memory against the context: xLSTM in pieces with the state carried (memory
    flat in the context), Llama over the whole window (attention grows with it). One timed run per context
    (a forward at 64k tokens takes a minute for the Transformer), after a warm-up at the first context, and
    one more under the profiler for the memory (its per-operation overhead would distort the time)."""
    torch.manual_seed(0)
    xlstm_model = our_xlstm_7_1(vocab_size, dim, blocks, heads).eval()
    llama = LlamaLM(LlamaConfig(vocab_size=vocab_size, embedding_dim=dim, num_blocks=blocks, num_heads=heads)).eval()

    def xlstm_forward(tokens):
        state = None
        for piece_tokens in tokens.split(piece, dim=1):
            _, state = xlstm_model(piece_tokens, state=state, return_state=True)

    runs = {"xlstm_7_1 (pieces of %d)" % piece: xlstm_forward, "llama": llama}
    rows = []
    with torch.no_grad():
        for name, run in runs.items():
            run(torch.randint(vocab_size, (1, contexts[0])))
            for context in contexts:
                tokens = torch.randint(vocab_size, (1, context), generator=torch.Generator().manual_seed(context))
                start = time.perf_counter()
                run(tokens)
                seconds = time.perf_counter() - start
                peak = peak_memory_mib(lambda run=run: run(tokens))
                rows.append({"model": name, "context": context, "threads": torch.get_num_threads(),
                             "tokens_per_s": context / seconds, "peak_MiB": peak})
    return rows


def plot_context(rows: list[dict], path: Path) -> None:
    """Tokens/s and peak memory against the context, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == name]
        contexts = [row["context"] for row in mine]
        speed.plot(contexts, [row["tokens_per_s"] for row in mine], marker="o", label=name)
        memory.plot(contexts, [row["peak_MiB"] for row in mine], marker="o", label=name)
    for axis, label in ((speed, "forward tokens/s"), (memory, "peak memory (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("context (tokens)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    speed.legend()
    figure.suptitle(f"Forward pass on CPU, size tiny, threads: {torch.get_num_threads()}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def matmul_flops(size: int, repeats: int = 3) -> float:
    """FLOP/s of a (size x size) @ (size x size) fp32 matmul: the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / timed(lambda: a @ b, repeats) * 1e3


def bench_mfu(batch: int = 8, seq_len: int = 512, vocab_size: int = 8192, dim: int = 256, blocks: int = 8,
              heads: int = 4, steps: int = 3, matmul_size: int = 4096) -> list[dict]:
    """Model FLOPs utilization of our tiny training step against a large matmul measured in the same run."""
    torch.manual_seed(0)
    model = our_xlstm_7_1(vocab_size, dim, blocks, heads)
    peak = matmul_flops(matmul_size)
    ms = training_step_ms(model, batch, seq_len, vocab_size, steps)
    tokens_per_s = batch * seq_len / ms * 1e3
    achieved = tokens_per_s * training_flops_per_token(model, seq_len)
    return [{"model": "ours xlstm_7_1", "B": batch, "S": seq_len, "threads": torch.get_num_threads(),
             "tokens_per_s": tokens_per_s, "train_GFLOP_per_s": achieved / 1e9,
             "matmul_size": matmul_size, "matmul_GFLOP_per_s": peak / 1e9, "mfu": achieved / peak}]


def size_preset(size: str) -> dict:
    """Width, blocks, heads and vocabulary (rounded up to 64) of a configs/size preset."""
    preset = OmegaConf.load(REPO / "configs" / "size" / f"{size}.yaml")
    return dict(dim=preset.model.embedding_dim, blocks=preset.model.num_blocks, heads=preset.model.num_heads,
                vocab_size=round_up(preset.tokenizer.vocab_size, 64))


def bench_sizes(sizes: tuple[str, ...] = ("125m", "350m"), batch: int = 8, seq_len: int = 2048, steps: int = 5,
                shapes: dict[str, dict] | None = None) -> list[dict]:
    """Training-step tokens/s and MFU of our xLSTM[7:1] at the paper sizes on the GPU: bf16 autocast, the
    Triton kernels (backend auto), fused AdamW. Without a GPU the rows say so, unless `shapes` gives small
    stand-ins (the smoke run: the same code on the CPU, native kernels)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and shapes is None:
        return [{"model": "ours xlstm_7_1", "size": size, "skipped": "no GPU: run this on a GPU machine"}
                for size in sizes]
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    for size in sizes:
        shape = (shapes or {}).get(size) or size_preset(size)
        torch.manual_seed(0)
        model = our_xlstm_7_1(shape["vocab_size"], shape["dim"], shape["blocks"], shape["heads"]).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        tokens = torch.randint(shape["vocab_size"], (batch, seq_len + 1), device=device)

        def step():
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(tokens[:, :-1], labels=tokens[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = timed(step, steps)
        tokens_per_s = batch * seq_len / ms * 1e3
        peak = peak_flops(torch.device(device), torch.bfloat16)
        achieved = tokens_per_s * training_flops_per_token(model, seq_len)
        row = {"model": "ours xlstm_7_1", "size": size, "device": device_name, "parameters": model.num_parameters(),
               "B": batch, "S": seq_len, "step_ms": ms, "tokens_per_s": tokens_per_s,
               "train_TFLOP_per_s": achieved / 1e12}
        if peak:  # known for A100/H100/H200 and more (xlstm_lm.training.flops.peak_flops)
            row["mfu"] = achieved / peak
        if device == "cuda":
            row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
    return rows


def run_benchmarks(names: list[str], smoke: bool, out_dir: Path, plot: Path | None, compiled: bool = False) -> None:
    """Run the named sub-benchmarks at full size or, with smoke, at tiny sizes; print and write each."""
    tiny_model = dict(vocab_size=256, dim=32, blocks=2, heads=2)
    for name in names:
        if name == "mlstm":
            rows = bench_mlstm((64, 128), heads=2, head_dim=16, chunk_size=32, repeats=1) if smoke \
                else bench_mlstm(tuple(2**p for p in range(8, 15)))
        elif name == "slstm":
            rows = bench_slstm((8,), batch=2, heads=2, head_dim=8, repeats=1) if smoke \
                else bench_slstm((256, 512, 1024, 2048))
        elif name == "model":
            rows = bench_model(batch=2, seq_len=32, steps=1, compiled=compiled, **tiny_model) if smoke \
                else bench_model(compiled=compiled)
        elif name == "context":
            rows = bench_context((64, 128), piece=64, **tiny_model) if smoke \
                else bench_context(tuple(2**p for p in range(10, 17)))
            plot_path = plot or (out_dir / "context_scaling.png" if smoke else REPO / "docs" / "context_scaling.png")
            plot_context(rows, plot_path)
            print(f"plot: {plot_path}")
        elif name == "mfu":
            rows = bench_mfu(batch=2, seq_len=32, steps=1, matmul_size=256, **tiny_model) if smoke else bench_mfu()
        else:
            rows = bench_sizes(batch=2, seq_len=32, steps=1, shapes={size: tiny_model for size in ("125m", "350m")}) \
                if smoke else bench_sizes()
        print(f"\n## {name}\n\n{markdown_rows(rows)}\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"cpu_{name}.json").write_text(json.dumps(rows, indent=1))


def markdown_rows(rows: list[dict]) -> str:
    """The rows as a markdown table over the union of their keys (skipped rows lack the timing columns);
    small numbers (differences to float64) in scientific notation."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
        return "-" if value is None else " ".join(str(value).replace("|", "/").split())  # one table cell

    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    names = ["mlstm", "slstm", "model", "context", "mfu", "sizes"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="sub-benchmarks to run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs, in seconds")
    parser.add_argument("--out-dir", type=Path, default=REPO / "outputs" / "bench", help="where the JSON goes")
    parser.add_argument("--plot", type=Path, default=None,
                        help="context plot (default docs/context_scaling.png, with --smoke <out-dir>/context_scaling.png)")
    parser.add_argument("--compile", action="store_true",
                        help="model: also time our model under torch.compile (compiling takes minutes on a CPU)")
    args = parser.parse_args()
    run_benchmarks(args.only, args.smoke, args.out_dir, args.plot, args.compile)


if __name__ == "__main__":
    main()
