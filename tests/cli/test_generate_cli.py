"""`xlstm-generate`: the prompt and its continuation on stdout, nothing written; bad input is one message."""

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONFIG_DIR
from tests.evaluation.tiny_export import tiny_export  # noqa: F401 (a fixture)
from xlstm_lm.cli.generate import generate_text, quote_prompt_override
from xlstm_lm.cli.schemas import register_generate_configs


def compose_generate(overrides):
    register_generate_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_greedy_generation_prints_the_prompt_and_continuation(tmp_path, tiny_export):  # noqa: F811
    overrides = [f"ckpt={tiny_export}", "prompt=def main(", "gen.max_new_tokens=12", "gen.temperature=0"]
    result = subprocess.run([sys.executable, "-m", "xlstm_lm.cli.generate", *overrides], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    expected = generate_text(compose_generate(quote_prompt_override(overrides)))
    assert result.stdout == expected + "\n" and expected.startswith("def main(") and len(expected) > len("def main(")
    assert "tokens/s" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no log file


@pytest.mark.parametrize("prompt", ["def main(", "f(a, b=[1])", "it's", "a\\b", "end\\", 'x = "${HOME}"', "", "'q'"])
def test_a_bare_prompt_reaches_the_config_unchanged(prompt):
    cfg = compose_generate(quote_prompt_override(["ckpt=x", f"prompt={prompt}"]))
    assert cfg.prompt == (prompt if prompt != "'q'" else "q")  # a quoted value is Hydra's to unquote


def test_sampling_depends_on_the_seed_only(tiny_export):  # noqa: F811
    def sample(seed):
        return generate_text(compose_generate([f"ckpt={tiny_export}", "prompt=x", "gen.max_new_tokens=20",
                                               "gen.temperature=2.0", "gen.top_k=null", "gen.stop_at_eos=false",
                                               f"gen.seed={seed}"]))

    assert sample(0) == sample(0) != sample(1)


def test_a_prompt_file_is_the_prompt(tiny_export, tmp_path):  # noqa: F811
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("f(a, b=[1]) and ${HOME}")
    settings = [f"ckpt={tiny_export}", "gen.max_new_tokens=5", "gen.temperature=0"]
    from_file = generate_text(compose_generate([*settings, f"prompt_file={prompt_file}"]))
    typed = quote_prompt_override([*settings, f"prompt={prompt_file.read_text()}"])
    assert from_file == generate_text(compose_generate(typed))
    assert from_file.startswith("f(a, b=[1]) and ${HOME}")


@pytest.mark.parametrize("overrides,error,message", [
    ([], ValueError, "ckpt is required"),
    (["ckpt=EXPORT", "prompt=x", "prompt_file=p.txt"], ValueError, "not both"),
    (["ckpt=EXPORT", "prompt_file=/no/such/prompt.txt"], FileNotFoundError, "/no/such/prompt.txt"),
    (["ckpt=EXPORT", "gen.prefill_length=0"], ValueError, "gen.prefill_length must be a positive integer"),
    (["ckpt=/no/such/export"], FileNotFoundError, "/no/such/export"),
    (["ckpt=EXPORT", "gen.top_p=0"], ValueError, "gen.top_p must be in"),
])
def test_bad_input_raises_the_errors_main_reports(tiny_export, overrides, error, message):  # noqa: F811
    overrides = [item.replace("EXPORT", str(tiny_export)) for item in overrides]
    with pytest.raises(error, match=message):
        generate_text(compose_generate(overrides))


def test_xlstm_generate_console_script_points_at_the_cli_main():
    from importlib.metadata import entry_points

    from xlstm_lm.cli.generate import main

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "xlstm-generate"]
    assert script.load() is main
