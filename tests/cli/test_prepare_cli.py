"""`xlstm-prepare-data`: prepares and prints the cache and its totals; bad input is one message and exit code 1."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONFIG_DIR
from xlstm_lm.cli.prepare import prepare_data
from xlstm_lm.cli.schemas import register_configs
from xlstm_lm.data import load


def run_prepare(cwd: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xlstm_lm.cli.prepare", *overrides, f"hydra.run.dir={cwd / 'run'}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def compose_prepare(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("prepare", overrides=overrides)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Stories as compressed JSON lines and code as a folder of plain text files."""
    folder = tmp_path / "corpus"
    (folder / "code").mkdir(parents=True)
    lines = "".join(json.dumps({"text": f"story {index}: " + "once upon a time " * (index % 4 + 1)}) + "\n"
                    for index in range(80))
    (folder / "stories.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    for index in range(40):
        (folder / "code" / f"m{index}.py").write_text(f"def f{index}(x):\n    return x * {index}\n" * (index % 3 + 1))
    return folder


def test_mixture_from_the_command_line_prints_path_and_totals(tmp_path: Path, corpus: Path) -> None:
    sources = (f"data.sources=[{{kind: files, files: ['{corpus}/*.jsonl.gz'], weight: 1}},"
               f"{{kind: files, files: ['{corpus}/code'], weight: 1}}]")
    result = run_prepare(tmp_path, "data=mixture", sources, f"data.cache_dir={tmp_path / 'cache'}",
                         "tokenizer.vocab_size=300", "data.shard_tokens=512", "data.num_proc=2",
                         "data.val_fraction=0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("prepared data: ")]
    manifest = load(path).manifest
    assert [source["weight"] for source in manifest["sources"]] == [0.5, 0.5]
    train = manifest["splits"]["train"]
    assert f"train: {train['documents']:,} documents, {train['tokens']:,} tokens" in result.stdout
    assert len(train["shards"]) == -(-train["tokens"] // 512) > 1


def test_bad_input_is_one_message_and_exit_code_1(tmp_path: Path, corpus: Path) -> None:
    result = run_prepare(tmp_path, "data=files", f"data.files=['{corpus}/*.parquet']",
                         f"data.cache_dir={tmp_path / 'cache'}")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "matches no file" in output and "Traceback" not in output
    assert not (tmp_path / "cache").exists()


def test_hub_dataset_offline_fails_at_once_with_advice(tmp_path: Path) -> None:
    result = run_prepare(tmp_path, "data=tinystories", f"data.cache_dir={tmp_path / 'cache'}",
                         HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "roneneldan/TinyStories" in output and "data=files data.files=" in output


@pytest.mark.parametrize("overrides, error, message", [
    (["data=files"], ValueError, "data=files needs data.files"),
    (["data=mixture"], ValueError, "data=mixture needs data.sources"),
    (["data=files", "data.files=[{corpus}/absent.txt]"], FileNotFoundError, "absent.txt does not exist"),
    (["data=files", "data.files=[{corpus}/stories.jsonl.gz]", "data.text_field=body"], ValueError,
     "stories.jsonl.gz:1 has no field 'body'"),
])
def test_bad_settings_raise_the_errors_main_reports(tmp_path, corpus, overrides, error, message) -> None:
    overrides = [override.format(corpus=corpus) for override in overrides] + [f"data.cache_dir={tmp_path / 'c'}"]
    with pytest.raises(error, match=message):
        prepare_data(compose_prepare(overrides))
