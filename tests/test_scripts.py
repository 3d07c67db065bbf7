"""The benchmark scripts run (reduced size on CPU) and write the JSON they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
