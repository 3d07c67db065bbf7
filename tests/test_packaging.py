"""A non-editable install carries the Hydra configs: the CLIs compose their config from the installed package."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_configs_and_the_train_cli_composes_from_them(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(REPO)]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("xlstm_lm-*.whl"))
    install = [*pip, "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, cwd=tmp_path)
    assert (tmp_path / "site" / "xlstm_lm" / "configs" / "model" / "xlstm_7_1.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # ahead of the editable install of the repository
    result = subprocess.run([sys.executable, "-m", "xlstm_lm.cli.train", "model=xlstm_7_1", "--cfg", "job"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio: '7:1'" in result.stdout
    probe = [sys.executable, "-c", "import xlstm_lm.cli.train as t; print(t.__file__)"]
    assert str(tmp_path / "site") in subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True).stdout
