"""`xlstm-prepare-data`: tokenize the configured data into its cache folder, print the folder and the totals.

    xlstm-prepare-data data=files data.files=[corpus/,extra.jsonl.zst] tokenizer=gpt2 data.num_proc=16

It composes the training config, so the same `data=`, `tokenizer=` and `size=` overrides as a later
`train.py` run prepare exactly the cache that run reads (DESIGN.md §10). `prepare_data(cfg)` does the work
(tests call it); `main` is the thin Hydra entry point.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from xlstm_lm.cli.errors import exit_on_user_error, refuse_unknown_keys
from xlstm_lm.cli.schemas import TrainConfig, register_configs, to_config
from xlstm_lm.cli.train import CONFIG_DIR
from xlstm_lm.data.cache import describe, load, prepare
from xlstm_lm.data.synthetic import TaskConfig

log = logging.getLogger(__name__)


def prepare_data(cfg: DictConfig | TrainConfig) -> Path:
    """Prepare (or find) the cache of `cfg.data` and `cfg.tokenizer`; print its path and totals."""
    config: TrainConfig = to_config(cfg)
    if isinstance(config.data, TaskConfig):
        raise ValueError(f"data={config.data.task} is generated on the fly while training: there is nothing to prepare")
    path = prepare(config.data, config.tokenizer)
    manifest = load(path).manifest
    print(f"prepared data: {path}")
    print(f"totals: {describe(manifest)}")
    print(f"tokenizer: vocabulary {manifest['tokenizer']['vocab_size']}, sha256 {manifest['tokenizer']['sha256']}")
    return path


register_configs()


def main() -> None:
    """The command: misspelt keys are refused in our words before Hydra runs the job."""
    refuse_unknown_keys(CONFIG_DIR, "prepare")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
def _main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        prepare_data(cfg)


if __name__ == "__main__":
    main()
