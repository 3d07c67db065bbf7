"""The structured configs of the CLIs (train, eval, generate), registered in Hydra's ConfigStore.

Every group's YAML is merged onto these dataclasses, so a misspelt key fails at compose time with
Hydra's message, before any data is read or any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.synthetic import TASKS
from xlstm_lm.evaluation.accuracy import TaskEvalConfig
from xlstm_lm.evaluation.documents import EvalDataConfig
from xlstm_lm.evaluation.generation import GenerationConfig
from xlstm_lm.evaluation.perplexity import PerplexityConfig
from xlstm_lm.models import LlamaConfig, LSTMConfig, MambaConfig, XLSTMConfig, XLSTMLargeConfig
from xlstm_lm.training.optim import OptimizerConfig, SchedulerConfig
from xlstm_lm.training.trainer import LoggerConfig, TrainerConfig


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: Any = None  # one of the model group's schemas below, chosen by `model=`
    data: Any = None  # the data group's schema: `DataConfig` (documents) or a synthetic task's, chosen by `data=`
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    reset_at_doc_starts: bool = True  # reset recurrent memories at document boundaries
    ckpt_path: Optional[str] = "auto"  # a checkpoint to resume from; auto: the run directory's newest, if any
    init_from: Optional[str] = None  # a model folder (export or Hugging Face xLSTM) whose weights a new run starts from
    run_dir: Optional[str] = None  # the run directory (train.yaml: hydra.run.dir follows it; timestamped by default)


def unknown_keys(cfg: DictConfig, path: str = "") -> list[str]:
    """Keys of `cfg` that its schemas do not declare, as dotted paths. Hydra's append syntax
    (`+trainer.bogus_key=1`) adds keys past a structured config's checks, and `OmegaConf.to_object` keeps
    them as stray attributes."""
    schema = OmegaConf.get_type(cfg)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key in cfg.keys():
        name = f"{path}{key}"
        if declared is not None and key not in declared:
            found.append(name)
        node = cfg._get_node(key)  # not cfg[key]: no interpolation is resolved here
        items = [(i, node._get_node(i)) for i in range(len(node))] if isinstance(node, ListConfig) else [(None, node)]
        for index, item in items:  # a list (mixture sources) is checked item by item
            if isinstance(item, DictConfig) and not item._is_none() and not item._is_missing():
                found += unknown_keys(item, f"{name}." if index is None else f"{name}[{index}].")
    return found


def to_config(cfg: DictConfig | Any) -> Any:
    """The composed config as its dataclasses, refusing keys no schema declares (however they were added)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    if stray := unknown_keys(cfg):
        raise ValueError(f"unknown config key(s) {', '.join(stray)}: no such setting (check the spelling; "
                         "`python train.py --cfg job` prints every key the config has)")
    return OmegaConf.to_object(cfg)


# the schema each option of the `model` group starts from (its YAML lists it first in `defaults`)
MODEL_SCHEMAS = {"xlstm_schema": XLSTMConfig, "xlstm_large_schema": XLSTMLargeConfig, "llama_schema": LlamaConfig,
                 "lstm_schema": LSTMConfig, "mamba_schema": MambaConfig}

# the schema each option of the `data` group starts from: documents, or one per synthetic task
DATA_SCHEMAS = {"data_schema": DataConfig} | {f"{name}_schema": schema for name, (schema, _) in TASKS.items()}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="model", name=name, node=schema)
    for name, schema in DATA_SCHEMAS.items():
        store.store(group="data", name=name, node=schema)


@dataclass
class EvalConfig:
    """One `xlstm-eval` run: the checkpoints to compare, the text and how it is scored."""

    ckpt: Any = MISSING  # an export folder or a Lightning .ckpt, or a list of them to compare
    tokenizer_path: Optional[str] = None  # a tokenizer.json to use instead of each checkpoint's own
    device: str = "auto"  # auto: the GPU when there is one
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: PerplexityConfig = field(default_factory=PerplexityConfig)
    task: TaskEvalConfig = field(default_factory=TaskEvalConfig)  # checkpoints of a synthetic task: accuracy

    def __post_init__(self) -> None:
        paths = self.checkpoints
        if not paths or not all(isinstance(path, str) and path for path in paths):
            raise ValueError(f"ckpt must be a path or a list of paths, got {self.ckpt!r}")

    @property
    def checkpoints(self) -> list[str]:
        return [self.ckpt] if isinstance(self.ckpt, str) else list(self.ckpt or [])


@dataclass
class GenerateConfig:
    """One `xlstm-generate` run: a checkpoint, a prompt and the sampling settings."""

    ckpt: str = MISSING  # an export folder or a Lightning .ckpt
    prompt: str = ""
    prompt_file: Optional[str] = None  # a text file holding the prompt, instead of prompt=
    tokenizer_path: Optional[str] = None  # a tokenizer.json to use instead of the checkpoint's own
    device: str = "auto"
    gen: GenerationConfig = field(default_factory=GenerationConfig)


def register_eval_configs() -> None:
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def register_generate_configs() -> None:
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)
