"""The benchmark scripts run (reduced size on CPU) and write the JSON they promise."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_CORPUS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["mlstm", "slstm"])
def test_bench_kernels_smoke_run_writes_rows(tmp_path, family):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_kernels.py"), "--smoke", "--family", family,
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert rows and all(row["error"] is None and row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 for row in rows), rows
    names = {row.get("provider", row.get("backend")) for row in rows}
    assert "triton" in names if family == "slstm" else {"triton L64", "native", "sdpa"} <= names  # ours ran
    assert "|" in result.stdout  # the table


def test_bench_prepare_smoke_run_writes_both_rows(tmp_path):
    out = tmp_path / "prepare.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_prepare.py"), "--smoke", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    baseline, pipeline = json.loads(out.read_text())
    assert (baseline["name"], pipeline["name"]) == ("baseline", "pipeline")
    assert pipeline["tokens"] == baseline["tokens"] > 0 and pipeline["bytes"] == baseline["bytes"] > 0
    assert pipeline["vs_baseline"] > 0 and "| pipeline |" in result.stdout


@pytest.mark.parametrize("benchmark", ["mlstm", "slstm", "model", "context", "mfu", "sizes"])
def test_bench_cpu_smoke_run_writes_rows(tmp_path, benchmark):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_cpu.py"), "--smoke", "--only", benchmark,
                             "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / f"cpu_{benchmark}.json").read_text())
    assert rows and f"## {benchmark}" in result.stdout and "|" in result.stdout
    ours = [row for row in rows if str(row.get("provider", row.get("model"))).startswith(("ours", "xlstm"))]
    assert ours, "no row for our implementation"
    for row in rows:
        if "skipped" in row:
            continue
        numbers = [value for key, value in row.items() if key.endswith(("_ms", "_per_s", "_MiB", "diff", "mfu"))]
        assert numbers and all(isinstance(x, float) and x == x and x >= 0 for x in numbers), row
    if benchmark == "mlstm":  # accuracy against float64 beside the times: ours is float32-exact
        assert all(row["h_max_abs_diff"] < 1e-4 and row["grad_max_abs_diff"] < 1e-3 for row in ours)
    if benchmark == "model" and len(rows) == 2:  # the official model is built to the same size
        assert abs(rows[0]["parameters"] / rows[1]["parameters"] - 1) <= 0.01
    if benchmark == "context":
        assert (tmp_path / "context_scaling.png").stat().st_size > 0
    if benchmark == "mfu":
        assert 0 < rows[0]["mfu"] < 1


def test_bench_loader_smoke_run_reports_tokens_per_second(tmp_path):
    out = tmp_path / "loader.json"
    overrides = [f"data.root={SMALL_CORPUS}", f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=32",
                 "data.batch_size=4", "tokenizer.vocab_size=512"]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_loader.py"), "--batches", "5",
                             "--workers", "0", "--json", str(out), *overrides],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["tokens"] == 5 * 4 * 32 and row["tokens_per_s"] > 0
    assert "| 0 | 4 x 32 | 5 |" in result.stdout


def test_gpu_check_smoke_run_writes_every_step(tmp_path):
    """The GPU check (issue 19) at tiny sizes on the CPU: every step runs and writes rows with real numbers."""
    out = tmp_path / "gpu_check"
    overrides = [f"data.root={SMALL_CORPUS}", f"data.cache_dir={tmp_path / 'cache'}", "tokenizer.vocab_size=512"]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--smoke", "--out", str(out),
                             *overrides], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    status = {line.split(":")[0] for line in result.stdout.splitlines() if "'exit': 0" in line}
    assert status == {"kernel_tests", "warps", "lightning", "kernels", "train", "generate"}, result.stdout
    rows = {step: json.loads((out / f"{step}.json").read_text()) for step in status}
    assert rows["kernel_tests"][0] == {"passed": 1, "failed": 0, "skipped": 0}
    float32 = [row for row in rows["warps"] if row["dtype"] == "float32"]
    assert {row["warps"] for row in float32} == {4, 8}
    assert all(row[name] < 1e-5 for row in float32 for name in ("h", "dq", "dk", "dv", "di", "df")), float32
    (lightning,) = rows["lightning"]
    assert lightning["exit"] == 0 and "config.json" in lightning["export"] and lightning["val/loss"] > 0
    assert {"triton L64", "native", "sdpa"} <= {row.get("provider") for row in rows["kernels"]}
    (wide_slstm,) = [row for row in rows["kernels"] if row.get("backend") == "triton"]
    assert wide_slstm["DH"] == 24 and wide_slstm["error"] is None and wide_slstm["fwd_bwd_ms"] > 0
    assert "triton L64" in (out / "kernels_profile.txt").read_text()
    trained = {row["model"]: row for row in rows["train"]}
    assert set(trained) == {"xlstm_7_1", "llama", "xlstm_large", "official xLSTMLarge", "xlstm_7_1 8 heads"}
    for row in trained.values():
        assert "error" not in row and row["finite"] and row["tokens_per_s"] > 0 and row["steps"] >= 3, row
    assert trained["xlstm_7_1 8 heads"]["parameters_M"] != trained["xlstm_7_1"]["parameters_M"]  # other heads
    assert {(row["model"], row["prompt"]) for row in rows["generate"]} == \
        {(model, prompt) for model in ("xlstm_7_1", "llama") for prompt in (24, 96)}
    assert all(row["decode_ms_per_token"] > 0 and row["prefill_tokens_per_s"] > 0 for row in rows["generate"])
    assert "## train" in (out / "summary.md").read_text()


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_reproduce_smoke_run_writes_report_and_reads_finished_runs_back(tmp_path):
    """Every part of the paper-claims reproduction at toy budgets; a second run trains nothing again."""
    out = tmp_path / "reproduce"
    command = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--smoke", "--out", str(out),
               f"data.root={SMALL_CORPUS}", f"data.cache_dir={tmp_path / 'cache'}", "tokenizer.vocab_size=512"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {run["name"]: run for run in json.loads((out / "results.json").read_text())}
    formal = [f"{task}-{model}" for task in ("parity", "cycle_navigation")
              for model in ("xlstm_0_1", "xlstm_1_1", "xlstm_1_0", "llama", "mamba", "lstm")]
    mqar = [f"mqar{pairs}-{model}" for pairs in (2, 4) for model in ("xlstm_1_0", "xlstm_1_1", "llama", "mamba")]
    assert set(formal + mqar) <= set(runs)
    assert all([row["length"] for row in runs[name]["accuracy"]] == [8, 16] for name in formal)
    assert all([row["length"] for row in runs[name]["accuracy"]] == [32] for name in mqar)
    for run in runs.values():
        assert all(0 <= row["sequence_accuracy"] <= row["token_accuracy"] <= 1 and row["sequences"] == 32
                   for row in run["accuracy"]), run
    lm = sorted(name for name in runs if name.startswith("lm-llama-"))
    assert lm == ["lm-llama-lr0.001", "lm-llama-lr0.002", "lm-llama-lr0.004"][:len(lm)] and len(lm) >= 2
    assert all(f"data.root={SMALL_CORPUS}" in runs[name]["overrides"] and runs[name]["metrics"]["val/ppl"] > 1
               for name in lm)
    report = (out / "report.md").read_text()
    for heading in ("### parity", "### cycle_navigation", "### MQAR", "### Language models", "The paper:"):
        assert heading in report
    for plot in ("parity.png", "cycle_navigation.png", "mqar.png", "lm_lr_grid.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    logs = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/console.log")}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {path: path.stat().st_mtime_ns for path in out.glob("runs/*/console.log")} == logs  # nothing retrained
    assert {run["name"]: run for run in json.loads((out / "results.json").read_text())} == runs


def test_learning_rate_grid_extends_past_its_edge_until_the_best_is_bracketed(tmp_path, monkeypatch):
    """A model whose best rate lies beyond the grid gets the grid continued (same ratio) until a worse rate
    follows its best, and no further than max_extensions."""
    reproduce = load_script("reproduce")

    def run(name, model, overrides, out, *scoring):
        lr = reproduce._override(overrides, "optimizer.lr")
        loss = (math.log(lr) - math.log(0.016)) ** 2  # the best rate: 0.016, three doublings past the grid
        return reproduce.RunResult(name, model, overrides, 1, 0.0, 1.0, {"val/loss": loss, "val/ppl": math.exp(loss)})

    monkeypatch.setattr(reproduce, "train_and_score", run)
    progress = reproduce.tqdm(disable=True, total=3)
    budget = reproduce.Budget(lm_grid=(0.001, 0.002, 0.004), max_extensions=4)
    tried = [reproduce._lr(result) for result in reproduce.tune_learning_rate("llama", budget, tmp_path, progress)]
    assert tried == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032] and progress.total == 6
    budget = reproduce.Budget(lm_grid=(0.001, 0.002, 0.004), max_extensions=1)
    tried = [reproduce._lr(result) for result in reproduce.tune_learning_rate("llama", budget, tmp_path, progress)]
    assert tried == [0.001, 0.002, 0.004, 0.008]
