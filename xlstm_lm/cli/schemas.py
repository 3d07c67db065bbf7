"""The structured config of `train.py`, registered once in Hydra's ConfigStore.

Every group's YAML is merged onto these dataclasses, so a misspelt key fails at compose time with
Hydra's message, before any data is read or any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.models import LlamaConfig, LSTMConfig, XLSTMConfig
from xlstm_lm.training.optim import OptimizerConfig, SchedulerConfig
from xlstm_lm.training.trainer import LoggerConfig, TrainerConfig


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: Any = None  # one of the model group's schemas below, chosen by `model=`
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    reset_at_doc_starts: bool = True  # reset recurrent memories at document boundaries
    ckpt_path: Optional[str] = None  # a Lightning checkpoint (e.g. .../checkpoints/last.ckpt) to resume from
    validate_before_training: bool = False


# the schema each option of the `model` group starts from (its YAML lists it first in `defaults`)
MODEL_SCHEMAS = {"xlstm_schema": XLSTMConfig, "llama_schema": LlamaConfig, "lstm_schema": LSTMConfig}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="model", name=name, node=schema)
