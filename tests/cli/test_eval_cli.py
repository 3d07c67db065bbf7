"""`xlstm-eval`: a run prints the table and writes JSON and plot; bad input is one message and exit code 1."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONFIG_DIR
from tests.evaluation.tiny_export import MODEL_VOCAB, corpus_texts, tiny_export  # noqa: F401 (a fixture)
from xlstm_lm.cli.eval import evaluate, held_out_mismatch, held_out_note
from xlstm_lm.cli.schemas import register_eval_configs
from xlstm_lm.data.corpus import default_root
from xlstm_lm.data.config import TokenizerConfig
from xlstm_lm.data.tokenizer import train_tokenizer
from xlstm_lm.evaluation.documents import EvalDataConfig


def run_eval(cwd, *overrides):
    return subprocess.run([sys.executable, "-m", "xlstm_lm.cli.eval", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def compose_eval(overrides):
    register_eval_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("eval", overrides=list(overrides))


@pytest.fixture
def text_files(tmp_path):
    texts = [text[:3000] for text in corpus_texts(2)]
    files = [tmp_path / "one.py", tmp_path / "two.py"]
    for file, text in zip(files, texts):
        file.write_text(text)
    return files


def test_two_checkpoints_two_contexts_table_json_and_plot(tmp_path, tiny_export, text_files):  # noqa: F811
    run_dir = tmp_path / "run"
    result = run_eval(tmp_path, f"ckpt=[{tiny_export},{tiny_export}]", f"data.files=[{text_files[0]},{text_files[1]}]",
                      "eval.context_lengths=[64,16]", "eval.piece_length=32", "eval.batch_size=8",
                      f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "eval.json").read_text())
    rows = report["results"]
    assert [(row["checkpoint"], row["context_length"]) for row in rows] == [
        (str(tiny_export), 16), (str(tiny_export), 64)] * 2
    assert report["data"]["documents"] == 2 and "memory" in report
    for row in rows:
        assert row["tokens"] == rows[0]["tokens"] > 0 and row["bytes"] == sum(len(f.read_bytes()) for f in text_files)
        assert row["perplexity"] == pytest.approx(2.718281828 ** row["loss"], rel=1e-6)
        assert row["skipped"] is None and row["loss_by_position"][0]["first"] == 1
    assert rows[0]["loss"] == rows[2]["loss"]  # the same checkpoint twice
    assert (run_dir / "eval.png").read_bytes()[:4] == b"\x89PNG"
    lines = result.stdout.splitlines()  # the log shares stdout with the table
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("checkpoint")):]
    assert table[0].split()[:5] == ["checkpoint", "context", "loss", "ppl", "bpb"] and len(table) >= 5
    assert table[2].split()[:3] == [str(tiny_export), "64", f"{rows[1]['loss']:.4f}"]
    assert str(run_dir / "eval.json") in result.stdout


@pytest.mark.parametrize("override,message", [
    ("eval.context_lengths=[0]", "eval.context_lengths must be positive integers"),  # our check
    ("eval.context_lengths=[abc]", "eval.context_lengths"),  # Hydra's, at compose time
])
def test_bad_input_is_one_message_and_exit_code_1(tmp_path, tiny_export, override, message):  # noqa: F811
    result = run_eval(tmp_path, f"ckpt={tiny_export}", override, f"hydra.run.dir={tmp_path / 'run'}")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and message in output and "Traceback" not in output
    assert not (tmp_path / "run" / "eval.json").exists()


def test_bad_values_raise_the_errors_main_reports(tmp_path, tiny_export, text_files):  # noqa: F811
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    big = tmp_path / "big.json"
    train_tokenizer(corpus_texts(), TokenizerConfig(vocab_size=MODEL_VOCAB + 80)).save(str(big))
    files = f"data.files=[{text_files[0]}]"
    cases = [
        ([files], ValueError, "ckpt is required"),
        ([f"ckpt=[{tiny_export},/no/such/export]", files], FileNotFoundError, "/no/such/export does not exist"),
        ([f"ckpt={tmp_path / 'notes.txt'}", files], ValueError, "not an xlstm-lm checkpoint"),
        ([f"ckpt={tiny_export}", files, "eval.context_lengths=[512,-1]"], ValueError, r"positive integers, got \[-1\]"),
        ([f"ckpt={tiny_export}", files, f"tokenizer_path={big}"], ValueError, "tokenizer has .* but the model"),
        ([f"ckpt={tiny_export}", f"data.files=[{tmp_path / 'missing.txt'}]"], FileNotFoundError, "missing.txt"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            evaluate(compose_eval(overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_xlstm_eval_console_script_points_at_the_cli_main():
    from importlib.metadata import entry_points

    from xlstm_lm.cli.eval import main

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "xlstm-eval"]
    assert script.load() is main


def test_plot_labels_are_short_run_names():
    from xlstm_lm.cli.eval import checkpoint_label

    assert checkpoint_label("outputs/extrapolation/llama/export") == "llama"
    assert checkpoint_label("outputs/2026-11-25/10-00-00/checkpoints/last.ckpt") == "10-00-00/last.ckpt"
    assert checkpoint_label("models/tiny") == "tiny"


def test_a_held_out_split_other_than_trainings_is_detected(tmp_path):
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "train_config.yaml").write_text(
        "data:\n  kind: folder\n  root: null\n  glob: '**/*.py'\n  include_tests: false\n  val_fraction: 0.01\n")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"  # found through the run's export
    for checkpoint in (str(export), str(ckpt)):
        assert "data.val_fraction 0.01 in training vs 0.05 here" in held_out_mismatch(checkpoint, EvalDataConfig())
    assert held_out_mismatch(str(export), EvalDataConfig(val_fraction=0.01)) is None
    assert held_out_mismatch(str(export), EvalDataConfig(files=["book.txt"])) is None  # not a split
    assert held_out_mismatch(str(tmp_path / "elsewhere"), EvalDataConfig()) is None  # no training config


def test_the_held_out_note_says_what_was_compared(tmp_path):
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "train_config.yaml").write_text(
        "data:\n  kind: folder\n  root: null\n  glob: '**/*.py'\n  include_tests: false\n  val_fraction: 0.01\n")
    may_overlap, message = held_out_note(str(export), EvalDataConfig())  # the same folder, split another way
    assert may_overlap and "may include documents it trained on (compared the corpus settings of its training " \
        "config with these (data.val_fraction 0.01 in training vs 0.05 here), not the texts)" in message
    books = tmp_path / "books"
    may_overlap, message = held_out_note(str(export), EvalDataConfig(root=str(books), val_fraction=0.01))
    assert not may_overlap
    assert message == (f"{export}: scoring the 'val' split of {books}, a folder apart from the one it was trained on "
                       f"({default_root()}), so it holds none of the files it was trained on (compared the corpus "
                       f"settings of its training config with these (data.root None in training vs {str(books)!r} "
                       "here), not the texts)")
