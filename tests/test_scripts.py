"""The benchmark scripts run (reduced size on CPU) and write the JSON they promise."""

import json
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
    assert rows and all(row.get("fwd_ms") not in (None, "-") for row in rows if not row.get("error"))
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
