"""`xlstm-lm-eval`: lm_eval's command line runs a local task with our model type; without lm_eval, one message."""

import os
import subprocess
import sys

import pytest

from tests.evaluation.tiny_export import tiny_export  # noqa: F401 (a fixture)
from xlstm_lm.cli import harness

pytest.importorskip("lm_eval")  # the dev extra installs it


def test_lm_eval_command_line_scores_a_local_task_with_xlstm_lm(tmp_path, tiny_export):  # noqa: F811
    data = tmp_path / "data.jsonl"
    data.write_text('{"context": "x = ", "answer": "1"}\n{"context": "import ", "answer": "os"}\n')
    (tmp_path / "tiny_lambada.yaml").write_text(
        f"task: tiny_lambada\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n")
    result = subprocess.run(
        [sys.executable, "-m", "xlstm_lm.cli.harness", "--model", "xlstm_lm", "--model_args",
         f"pretrained={tiny_export},max_length=64", "--tasks", "tiny_lambada", "--include_path", str(tmp_path),
         "--device", "cpu", "--batch_size", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "|tiny_lambada|" in result.stdout.replace(" ", "") and "acc" in result.stdout


def test_without_lm_eval_the_command_says_how_to_install_it(monkeypatch):
    for name in [name for name in sys.modules if name.startswith(("lm_eval.", "xlstm_lm.cli.lm_eval_model"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="pip install"):
        harness.main()
