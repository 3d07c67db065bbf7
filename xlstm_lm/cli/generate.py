"""`xlstm-generate`: continue a prompt with a trained model, one token at a time from its state (DESIGN.md §12).

    xlstm-generate ckpt=outputs/<date>/<time>/export prompt="def main(" gen.max_new_tokens=100 \
        gen.temperature=0.8 gen.top_k=50 gen.top_p=0.95 gen.seed=0

The prompt follows an end-of-document token, as a document does in training. The prompt and its
continuation go to stdout, the log to stderr. `generate_text(cfg)` does the work (tests call it); `main`
is the thin Hydra entry point. A bare `prompt=TEXT` is quoted for Hydra first, so any text works as typed
(parentheses, commas, quotes, `${...}`).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from xlstm_lm.cli.errors import exit_on_user_error, refuse_unknown_keys
from xlstm_lm.cli.loading import load_checkpoint, resolve_device
from xlstm_lm.cli.schemas import GenerateConfig, register_generate_configs, to_config
from xlstm_lm.cli.train import CONFIG_DIR
from xlstm_lm.data.tokenizer import eos_id
from xlstm_lm.evaluation.generation import generate

log = logging.getLogger(__name__)


def generate_text(cfg: DictConfig | GenerateConfig) -> str:
    """The prompt followed by the generated text."""
    if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "ckpt"):
        raise ValueError("ckpt is required: ckpt=<run dir>/export or a .ckpt file")
    config: GenerateConfig = to_config(cfg)
    model, tokenizer = load_checkpoint(config.ckpt, config.tokenizer_path, resolve_device(config.device))
    eos = eos_id(tokenizer)
    prompt_ids = [eos, *tokenizer.encode(read_prompt(config)).ids]
    start = time.perf_counter()
    generation = generate(model, prompt_ids, config.gen, eos_id=eos, vocab_size=tokenizer.get_vocab_size())
    seconds = time.perf_counter() - start
    log.info("%d tokens in %.2f s (%.1f tokens/s)", len(generation.token_ids), seconds,
             len(generation.token_ids) / seconds)
    return tokenizer.decode(prompt_ids + generation.token_ids)


def read_prompt(config: GenerateConfig) -> str:
    """The prompt: `prompt`, or the text of `prompt_file` (for prompts too long for a command line)."""
    if config.prompt_file is None:
        return config.prompt
    if config.prompt:
        raise ValueError("give prompt= or prompt_file=, not both")
    file = Path(config.prompt_file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt_file={config.prompt_file} does not exist")
    return file.read_text(encoding="utf-8", errors="replace")


def quote_prompt_override(args: list[str]) -> list[str]:
    """Command-line overrides with a bare `prompt=TEXT` turned into a Hydra quoted string holding TEXT as is.

    Hydra's override grammar rejects unquoted text with parentheses, brackets or commas, and resolves `${...}`;
    an already quoted value ('...' or "...") is left to Hydra.
    """
    quoted = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "prompt" and not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            value = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)  # escape quotes
            value = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, value)  # and a trailing backslash
            arg = "prompt='" + value.replace("${", "\\${") + "'"
        quoted.append(arg)
    return quoted


register_generate_configs()


def main() -> None:
    sys.argv[1:] = quote_prompt_override(sys.argv[1:])
    refuse_unknown_keys(CONFIG_DIR, "generate")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def _main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        text = generate_text(cfg)
    print(text)


if __name__ == "__main__":
    main()
