"""The GPU check (issue 19): one command that measures the whole GPU path and writes every number as JSON.

    bash scripts/gpu_check.sh run OUT_DIR           # on a GPU machine: installs the carried wheels, then this
    python scripts/gpu_check.py --out OUT_DIR       # the same, with the packages already importable
    python scripts/gpu_check.py --smoke --out DIR data.root=... tokenizer.vocab_size=512   # CPU, tiny sizes

Steps, each in its own process with its own time limit (so one that hangs or crashes leaves the others), each
writing OUT_DIR/<step>.json as rows are measured (a step cut off by its limit keeps what it had):

    kernel_tests  pytest on the GPU: the Triton mLSTM and sLSTM tests against float64 (float32 and bf16)
    warps         the Triton mLSTM at 4 and 8 warps against float64, forward and every gradient (8 warps
                  computed a wrong dq on an H100 under triton 3.6)
    lightning     `train.py trainer=gpu` end to end (Lightning, bf16-mixed, checkpoint, export) at 125m
    kernels       mLSTM forward and forward+backward at S 8192 (65,536 tokens, NH 16, DQK 128, DV 256, bf16):
                  ours at chunk 64 and 128 against TFLA (mlstm_kernels) at 64 and 128 and causal SDPA; the
                  sLSTM at B 16, NH 4, DH 256, S 2048 (the wide Triton kernels against the step loop)
    train         whole-model training steps (bf16 autocast, Triton kernels, fused AdamW, the training data
                  pipeline on the embedded corpus): xLSTM[7:1] and Llama at 125m and 350m, context 2048 and
                  8192, batch sized from a probe step to fill the GPU; tokens/s, MFU against the measured bf16
                  matmul peak and the datasheet's, peak memory, loss at the start and the end; ours
                  `xlstm_large` against the official xLSTMLarge (TFLA kernels) at the same configuration
    generate      prefill tokens/s and per-token decode latency, xLSTM[7:1] 350m against Llama 350m with its
                  KV cache, prompts of 2k and 16k tokens

The first three share the GPU (nothing in them is timed); the timed steps run alone after them.
OUT_DIR/summary.md holds every step's table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the runner

def write_rows(out: Path, step: str, rows: list[dict]) -> None:
    """Rewrite OUT/<step>.json with the rows so far (called after every row)."""
    (out / f"{step}.json").write_text(json.dumps(rows, indent=1, default=str))


def launch(step: str, args: argparse.Namespace) -> subprocess.Popen:
    """Start one step in its own process, its output in OUT/<step>.log."""
    command = [sys.executable, __file__, "--step", step, "--out", str(args.out), *(["--smoke"] if args.smoke else []),
               *(["--runs", *args.runs] if args.runs else []), *args.overrides]
    log = open(args.out / f"{step}.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def wait(step: str, process: subprocess.Popen, deadline: float) -> dict:
    """Wait for a step until `deadline` (time.monotonic), killing it past that; its status row."""
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        code = "killed at its time limit"
    return {"step": step, "exit": code}


# Time limits in seconds on a GPU (the smoke run gets 300 s for every step).
PHASES = [
    {"kernel_tests": 130, "warps": 130, "lightning": 130},  # untimed work, side by side
    {"kernels": 90},
    {"train": 270},
    {"generate": 70},
]


def run_all(args: argparse.Namespace) -> None:
    """Every step, phase after phase; prints and writes the summary."""
    args.out.mkdir(parents=True, exist_ok=True)
    status = []
    started = time.monotonic()
    for phase in PHASES:
        selected = {step: limit for step, limit in phase.items() if step in args.only}
        processes = {step: launch(step, args) for step in selected}
        phase_start = time.monotonic()
        for step, process in processes.items():
            limit = 300 if args.smoke else selected[step]
            status.append(wait(step, process, phase_start + limit) | {"seconds": round(time.monotonic() - phase_start)})
            print(f"{step}: {status[-1]}", flush=True)
    from bench_cpu import markdown_rows  # scripts/ is on sys.path when this runs as a script

    sections = [f"# GPU check\n\n{environment()}\n\ntotal {time.monotonic() - started:.0f} s\n\n{markdown_rows(status)}"]
    for step in (step for phase in PHASES for step in phase if step in args.only):
        path = args.out / f"{step}.json"
        rows = json.loads(path.read_text()) if path.exists() else [{"missing": f"{step}.json was not written"}]
        sections.append(f"## {step}\n\n{markdown_rows(rows)}")
    summary = "\n\n".join(sections) + "\n"
    (args.out / "summary.md").write_text(summary)
    print(summary)


def environment() -> str:
    import torch
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"device {device}, torch {torch.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}"


# --------------------------------------------------------------------------------------------- the steps

def step_kernel_tests(args: argparse.Namespace, out: Path) -> None:
    """The Triton kernel tests on this device (the interpreter on a CPU), reported per test."""
    selection = ["tests/kernels/test_mlstm_triton.py", "tests/kernels/test_slstm_triton.py",
                 "tests/kernels/test_mlstm_dispatch.py"]
    if args.smoke:
        selection = ["tests/kernels/test_mlstm_triton.py::test_float64_is_an_error_not_a_silent_float32_run"]
    workers = ["-n", "6"] if not args.smoke and _has_xdist() else []
    junit = out / "kernel_tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", *selection, *workers, "-q", "-p", "no:cacheprovider",
                    "--deselect", "tests/kernels/test_slstm_triton.py::test_kernel_compiles_for_hopper",
                    f"--junitxml={junit}"], cwd=REPO)
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    rows, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in cases:
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        key = {"failure": "failed", "error": "failed"}.get(outcome, outcome)
        rows[key] += 1
        if key == "failed":
            message = next(child for child in case if child.tag in ("failure", "error")).get("message", "")
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}", "message": message[:300]})
    write_rows(out, "kernel_tests", [rows, *failures])


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return False
    return True


def step_warps(args: argparse.Namespace, out: Path) -> None:
    """Our Triton mLSTM at 4 and 8 warps against the float64 reference on the same (rounded) inputs: relative
    errors of h and of the gradients of q, k, v and both gates, float32 and bf16 activations, realistic and
    extreme gates."""
    import torch

    _interpret_without_gpu()
    from xlstm_lm.kernels.mlstm import mlstm_reference, triton as mlstm_triton_module

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(1, 2, 256, 128, 256, 64), (1, 2, 200, 128, 256, 64), (1, 2, 256, 128, 256, 128)]
    if args.smoke:
        shapes = [(1, 1, 40, 16, 32, 16)]
    rows = []
    for B, NH, S, DQK, DV, L in shapes:
        for regime in ("realistic", "extreme"):
            generator = torch.Generator().manual_seed(S + L + len(regime))
            q, k = (torch.randn(B, NH, S, DQK, generator=generator, dtype=torch.float64) for _ in range(2))
            v = torch.randn(B, NH, S, DV, generator=generator, dtype=torch.float64)
            uniform = lambda low, high: low + (high - low) * torch.rand(B, NH, S, generator=generator,  # noqa: E731
                                                                        dtype=torch.float64)
            i, f = (uniform(-10, 0), uniform(3, 6)) if regime == "realistic" else (uniform(-30, 30), uniform(-30, 30))
            grad_h = torch.randn(B, NH, S, DV, generator=generator, dtype=torch.float64)
            inputs = [x.requires_grad_() for x in (q, k, v, i, f)]
            state = (torch.zeros(B, NH, DQK, DV, dtype=torch.float64), torch.zeros(B, NH, DQK, dtype=torch.float64),
                     torch.zeros(B, NH, dtype=torch.float64))
            for dtype in (torch.float32, torch.bfloat16):
                # the reference sees the inputs as the kernel does: rounded to bf16 (at extreme gates the
                # rounding alone moves the gradients by more than 100%, DESIGN.md §9)
                rounded = [x.detach().to(dtype if n < 3 else torch.float32).double().requires_grad_()
                           for n, x in enumerate(inputs)]
                h_ref = mlstm_reference(*rounded, state, chunk_size=L, eps=1e-6)[0]
                expected = [h_ref, *torch.autograd.grad(h_ref, rounded, grad_h)]
                for warps in (4, 8):
                    mlstm_triton_module.NUM_WARPS = warps
                    row = {"B": B, "NH": NH, "S": S, "DQK": DQK, "DV": DV, "L": L, "gates": regime, "warps": warps,
                           "dtype": str(dtype).removeprefix("torch.")}
                    try:
                        moved = [x.detach().to(device, dtype if n < 3 else torch.float32).requires_grad_()
                                 for n, x in enumerate(rounded)]
                        zeros = tuple(s.to(device, torch.float32) for s in state)
                        h = mlstm_triton_module.mlstm_triton(*moved, zeros, chunk_size=L, eps=1e-6)[0]
                        actual = [h, *torch.autograd.grad(h, moved, grad_h.to(device, h.dtype))]
                        for name, a, e in zip(("h", "dq", "dk", "dv", "di", "df"), actual, expected):
                            row[name] = relative_error(a.cpu(), e)
                    except Exception as error:  # recorded, the next variant still runs
                        row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                    rows.append(row)
                    write_rows(out, "warps", rows)
    mlstm_triton_module.NUM_WARPS = 4


def relative_error(actual, expected) -> float:
    """‖actual - expected‖ / ‖expected‖ in float64 (NaN stays NaN)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def _interpret_without_gpu() -> None:
    """The Triton interpreter on a machine without a GPU, set before the kernel modules load (DESIGN.md §9)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def step_lightning(args: argparse.Namespace, out: Path) -> None:
    """`train.py trainer=gpu` end to end: its exit status, the logged metrics and the export."""
    run_dir = out / "lightning_run"
    if args.smoke:
        overrides = ["size=tiny", "model.num_blocks=2", "model.embedding_dim=32", "model.num_heads=2",
                     "data.seq_len=32", "data.batch_size=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
                     "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1"]
    else:
        overrides = ["size=125m", "trainer=gpu", "data.seq_len=2048", "data.batch_size=16", "trainer.max_steps=30",
                     "trainer.val_check_interval=15", "trainer.limit_val_batches=8", "trainer.log_every_n_steps=5",
                     "trainer.checkpoint_every_n_steps=15", "data.num_workers=4"]
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "train.py", "model=xlstm_7_1", *overrides, *args.overrides,
                             f"run_dir={run_dir}", "ckpt_path=null"], cwd=REPO, capture_output=True, text=True)
    row = {"command": "train.py model=xlstm_7_1 " + " ".join(overrides), "exit": result.returncode,
           "seconds": round(time.monotonic() - started, 1)}
    metrics = run_dir / "logs" / "metrics.csv"
    if metrics.exists():
        import csv

        logged = list(csv.DictReader(metrics.open()))
        losses = [float(r["train/loss"]) for r in logged if r.get("train/loss")]
        row |= {"first_train_loss": losses[0] if losses else None, "last_train_loss": losses[-1] if losses else None}
        for column in ("val/loss", "val/ppl", "train/tokens_per_s", "train/mfu"):
            values = [float(r[column]) for r in logged if r.get(column)]
            row[column] = values[-1] if values else None
    row["export"] = sorted(p.name for p in (run_dir / "export").glob("*")) if (run_dir / "export").exists() else None
    row["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    for heavy in [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("export/*.safetensors")]:
        heavy.unlink()  # weights of a throwaway run: the names above are the evidence
    if result.returncode:
        row["stderr_tail"] = result.stderr[-1500:]
    write_rows(out, "lightning", [row])


def step_kernels(args: argparse.Namespace, out: Path) -> None:
    """scripts/bench_kernels.py at the goal shape: ours and TFLA at chunk 64 and 128, SDPA."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_kernels import bench_mlstm  # sets TRITON_INTERPRET without a GPU

    import torch

    from bench_slstm import bench_slstm

    if args.smoke:
        rows = bench_mlstm(tokens=256, seq_lens=(128,), heads=1, dqk=16, dv=32, chunk_size=64, dtype=torch.float32,
                           device="cpu", repeats=1)
    else:
        rows = bench_mlstm(tokens=65536, seq_lens=(8192,), chunk_size=64, triton_chunk_sizes=(128,), repeats=10)
    write_rows(out, "kernels", rows)
    # the sLSTM at the paper's 350m head width (4 x 256: the wide kernels) against the step loop
    rows += bench_slstm(batch=2, heads=1, head_dims=(24,), seq_lens=(8,), dtype=torch.float32, device="cpu",
                        repeats=1, backends=("triton",)) if args.smoke else \
        bench_slstm(batch=16, heads=4, head_dims=(256,), seq_lens=(2048,), repeats=3, backends=("triton", "native"))
    write_rows(out, "kernels", rows)
    profile_kernels(out, args.smoke)


def profile_kernels(out: Path, smoke: bool) -> None:
    """One forward+backward of ours and of TFLA under the PyTorch profiler: time per kernel, in
    OUT/kernels_profile.txt (where the backward's time goes)."""
    import torch
    from bench_kernels import mlstm_providers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, NH, S, DQK, DV = (1, 1, 128, 16, 32) if smoke else (8, 16, 8192, 128, 256)
    dtype = torch.float32 if smoke else torch.bfloat16
    q, k = (torch.randn(B, NH, S, DQK, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=device, dtype=dtype, requires_grad=True)
    i = (-10 * torch.rand(B, NH, S, device=device)).requires_grad_()
    f = (3 + 3 * torch.rand(B, NH, S, device=device)).requires_grad_()
    sections = []
    for name, run in mlstm_providers(device, 64, (128,)).items():
        if name in ("native", "sdpa"):
            continue
        run(q, k, v, i, f).sum().backward()  # compiled and warm
        activities = [torch.profiler.ProfilerActivity.CPU] + \
            ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as profiler:
            run(q, k, v, i, f).sum().backward()
            _synchronize(device.type)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        sections.append(f"## {name}\n{profiler.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60)}")
    (out / "kernels_profile.txt").write_text("\n\n".join(sections))


def compose_train_config(overrides: list[str]):
    """The training config exactly as `train.py` composes it with these overrides."""
    from hydra import compose, initialize_config_dir

    from xlstm_lm.cli.schemas import to_config
    from xlstm_lm.cli.train import CONFIG_DIR  # registers the schemas

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "run_dir=unused"])
    return to_config(cfg)


def matmul_peak_flops(device: str, size: int) -> float:
    """FLOP/s of a large bf16 matrix product (the mean of 10 after 3 warm-ups): the card's measured peak."""
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _synchronize(device)
    return 10 * 2 * size**3 / (time.perf_counter() - start)


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class OfficialLarge:
    """The official xLSTMLarge (mlstm_kernels' TFLA chunkwise kernels) built like our `xlstm_large` model, with
    our module's interface: (input_ids, doc_starts, labels) -> mean cross-entropy."""

    def __init__(self, model_config, chunk_size: int):
        import torch
        from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

        self.model = xLSTMLarge(xLSTMLargeConfig(
            embedding_dim=model_config.embedding_dim, num_heads=model_config.num_heads,
            num_blocks=model_config.num_blocks, vocab_size=model_config.vocab_size,
            chunkwise_kernel="chunkwise--triton_xl_chunk" if torch.cuda.is_available() else "chunkwise--native_autograd",
            mode="train", chunk_size=chunk_size, return_last_states=True,  # its layer unpacks (h, state)
            gate_soft_cap=model_config.gate_soft_cap, output_logit_soft_cap=model_config.logit_soft_cap))
        self.cross_entropy = torch.nn.functional.cross_entropy

    def __call__(self, input_ids, doc_starts, labels):
        logits = self.model(input_ids)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return self.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


def step_train(args: argparse.Namespace, out: Path) -> None:
    """Training throughput of every (model, size, context), one row each (see the module docstring)."""
    import torch

    _interpret_without_gpu()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured_peak = matmul_peak_flops(device, 256 if args.smoke else 8192)
    # The goal rows first (350m), then ours xlstm_large and xLSTM[7:1] with 8 heads (sLSTM heads of 128,
    # whose R stays on chip; the paper's 4 heads of 256 run the wide kernels), then 125m, then the official
    # peer: a step cut off by its limit loses the last rows.
    runs = [(model, size, context) for size in ("350m", "125m") for context in (2048, 8192)
            for model in ("xlstm_7_1", "llama")]
    runs[4:4] = [("xlstm_large", "350m", 2048), ("xlstm_7_1 8 heads", "350m", 2048)]
    runs.append(("official xLSTMLarge", "350m", 2048))  # last: on an H200 it aborted the process (SIGABRT)
    if args.smoke:
        runs = [(model, "tiny", 2048) for model in ("xlstm_7_1", "llama", "xlstm_large", "official xLSTMLarge",
                                                     "xlstm_7_1 8 heads")]
    if args.runs:
        runs = [run for run in runs if "@".join(map(str, run)) in args.runs]
    tiny = ["size=tiny", "model.num_blocks=2", "model.embedding_dim=32", "model.num_heads=2"]
    rows = []
    for model, size, context in runs:
        context = 16 if args.smoke else context
        row = {"model": model, "size": size, "S": context}
        try:
            overrides = [f"model={'xlstm_large' if model.startswith('official') else model.split()[0]}",
                         *(tiny if args.smoke else [f"size={size}"]), *args.overrides]
            if model.endswith("8 heads"):
                overrides.append(f"model.num_heads={4 if args.smoke else 8}")
            profile_to = out / f"train_profile_{model}_{size}_{context}.txt" \
                if model in ("xlstm_7_1", "llama") and size in ("350m", "tiny") and context <= 2048 else None
            row |= train_throughput(model, overrides, context, device, measured_peak, smoke=args.smoke,
                                    profile_to=profile_to)
        except Exception as error:  # recorded in the row; the next configuration still runs
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            traceback.print_exc()
        rows.append(row)
        write_rows(out, "train", rows)
        if device == "cuda":
            torch.cuda.empty_cache()


def train_throughput(name: str, overrides: list[str], context: int, device: str, measured_peak: float,
                     smoke: bool, profile_to: Path | None = None) -> dict:
    """Build the model and data as train.py does, size the batch from a probe step, train, time, report."""
    import torch

    from xlstm_lm.cli.train import resolve_vocab_size
    from xlstm_lm.data import TokenDataModule
    from xlstm_lm.models.io import TOKENIZER_FILE
    from xlstm_lm.training.flops import peak_flops, training_flops_per_token
    from xlstm_lm.training.module import LanguageModelModule

    config = compose_train_config([*overrides, f"data.seq_len={context}", "data.batch_size=1"])
    torch.manual_seed(config.seed)
    datamodule = TokenDataModule(config.data, config.tokenizer, seed=config.seed)
    datamodule.prepare_data()
    model_config = resolve_vocab_size(config.model, datamodule.vocab_size)
    module = LanguageModelModule.from_configs(model_config, config.optimizer, config.scheduler, 1000,
                                              config.reset_at_doc_starts,
                                              (datamodule.cache_path / TOKENIZER_FILE).read_text())
    flops_per_token = training_flops_per_token(module.model, context)
    parameters = module.model.num_parameters()
    if name.startswith("official"):
        forward = OfficialLarge(model_config, min(model_config.chunk_size, context))
        forward.model.to(device)
        trained = forward.model
        optimizer = torch.optim.AdamW(trained.parameters(), lr=config.optimizer.lr, fused=device == "cuda")
        parameters = sum(p.numel() for p in trained.parameters())
        del module
    else:
        module.to(device)
        forward, trained = module, module.model
        optimizer = module.configure_optimizers()["optimizer"]

    def train_step(batch) -> torch.Tensor:
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(batch["input_ids"], batch.get("doc_starts"), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), config.trainer.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def batches(batch_size: int):
        datamodule.data_config = dataclasses.replace(config.data, batch_size=batch_size)
        datamodule.setup("fit")
        return iter(datamodule.train_dataloader())

    # Probe: one step (it also compiles the kernels) at a small batch gives the memory of one window.
    probe_batch = 1 if smoke else max(1, 8192 // context)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    fixed = torch.cuda.memory_allocated() if device == "cuda" else 0
    train_step(next(batches(probe_batch)))
    batch_size = 2
    if device == "cuda":
        torch.cuda.synchronize()
        fixed = max(fixed, torch.cuda.memory_allocated())  # weights, gradients' storage, optimizer state
        per_window = max(1, torch.cuda.max_memory_allocated() - fixed) / probe_batch
        free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        batch_size = int(max(1, min(0.7 * free / per_window, 131072 // context)))
        torch.cuda.reset_peak_memory_stats()
    stream = batches(batch_size)
    losses, step_seconds = [], 10 if not smoke else 1e9
    warmup, max_steps = (1, 3) if smoke else (1, 24)
    for _ in range(warmup):
        losses.append(train_step(next(stream)))
    _synchronize(device)
    start = time.perf_counter()
    timed = 0
    while warmup + timed < max_steps and (timed < 2 or time.perf_counter() - start < step_seconds):
        losses.append(train_step(next(stream)))
        timed += 1
    _synchronize(device)
    elapsed = time.perf_counter() - start
    if profile_to is not None:  # one more step under the profiler: where a step's time goes
        activities = [torch.profiler.ProfilerActivity.CPU] + \
            ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
        with torch.profiler.profile(activities=activities) as profiler:
            losses.append(train_step(next(stream)))
            _synchronize(device)
        sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        profile_to.write_text(profiler.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    losses = [float(loss) for loss in losses]
    tokens_per_s = timed * batch_size * context / elapsed
    datasheet = peak_flops(torch.device(device), torch.bfloat16)  # None on a CPU
    row = {"parameters_M": parameters / 1e6, "B": batch_size, "steps": len(losses),
           "step_ms": elapsed / timed * 1e3, "tokens_per_s": tokens_per_s,
           "TFLOP_per_s": tokens_per_s * flops_per_token / 1e12,
           "mfu_measured_peak": tokens_per_s * flops_per_token / measured_peak,
           "mfu_datasheet": tokens_per_s * flops_per_token / datasheet if datasheet else None,
           "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
           "loss_first": statistics.mean(losses[:2]), "loss_last": statistics.mean(losses[-2:]),
           "finite": all(math.isfinite(loss) for loss in losses), "matmul_TFLOP_per_s": measured_peak / 1e12}
    return row


def step_generate(args: argparse.Namespace, out: Path) -> None:
    """Prefill tokens/s (pieces of 2048 with the state carried, as xlstm-generate does) and the median
    per-token decode latency after prompts of 2k and 16k tokens, bf16 autocast, batch 1."""
    import torch

    _interpret_without_gpu()
    from xlstm_lm.cli.train import resolve_vocab_size
    from xlstm_lm.models import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts, piece, decode_steps = ((24, 96), 16, 4) if args.smoke else ((2048, 16384), 2048, 64)
    tiny = ["size=tiny", "model.num_blocks=2", "model.embedding_dim=32", "model.num_heads=2", "tokenizer.vocab_size=512"]
    rows = []
    for name in ("xlstm_7_1", "llama"):
        config = compose_train_config([f"model={name}", *(tiny if args.smoke else ["size=350m"])])
        vocab = config.tokenizer.vocab_size
        model = build_model(dataclasses.asdict(resolve_vocab_size(config.model, vocab))).to(device).eval()
        for prompt_length in prompts:
            row = {"model": name, "size": "tiny" if args.smoke else "350m", "prompt": prompt_length}
            try:
                row |= time_generation(model, vocab, prompt_length, piece, decode_steps, device)
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            rows.append(row)
            write_rows(out, "generate", rows)
            if device == "cuda":
                torch.cuda.empty_cache()
        del model


def time_generation(model, vocab: int, prompt_length: int, piece: int, decode_steps: int, device: str) -> dict:
    import torch

    prompt = torch.randint(vocab, (1, prompt_length), device=device)

    def timed(fn: Callable[[], object]) -> tuple[float, object]:
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        return time.perf_counter() - start, result

    def prefill():
        state = None
        for start in range(0, prompt_length, piece):
            logits, state = model(prompt[:, start:start + piece], state=state, return_state=True)
        return logits, state

    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        prefill()  # warm-up (kernel compiles)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, (logits, state) = timed(prefill)
        token_ms = []
        for _ in range(decode_steps):
            token = logits[:, -1].argmax(-1, keepdim=True)
            step_seconds, (logits, state) = timed(lambda: model(token, state=state, return_state=True))
            token_ms.append(step_seconds * 1e3)
    warm = token_ms[len(token_ms) // 4:]  # the first steps allocate and compile
    return {"prefill_s": seconds, "prefill_tokens_per_s": prompt_length / seconds,
            "decode_ms_per_token": statistics.median(warm), "decode_tokens_per_s": 1e3 / statistics.median(warm),
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


STEPS: dict[str, Callable[[argparse.Namespace, Path], None]] = {
    "kernel_tests": step_kernel_tests, "warps": step_warps, "lightning": step_lightning, "kernels": step_kernels,
    "train": step_train, "generate": step_generate,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks that every step runs")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS), help="steps to run")
    parser.add_argument("--runs", nargs="+", help="train: only these rows, as MODEL@SIZE@CONTEXT (e.g. llama@350m@2048)")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # one step, in this process
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training config (data, tokenizer)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.step:
        STEPS[args.step](args, args.out)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
