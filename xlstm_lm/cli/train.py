"""`xlstm-train` / `python train.py`: compose the config with Hydra, prepare data, train, export.

    python train.py model=xlstm_7_1 size=tiny trainer.max_steps=300
    python train.py run_dir=runs/my_run ...   # a stable directory: the same command again resumes the run
    python train.py model=xlstm_large size=7b init_from=hf/xLSTM-7b   # continued pretraining from a model folder

`train(cfg, run_dir)` does the work and returns the final metrics (tests call it); `main` is the thin
Hydra entry point. Seeds and logging are set here, never in library code.

A refused run (a restart that does not fit the run's checkpoints, a fresh run in a run's directory) leaves
the run directory as it was: the record of the command (`.hydra/`) and the log file (`train.log`) are written
only once `train` has accepted the run (configs/train.yaml stops Hydra from writing `.hydra/` at start).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Callable, Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xlstm_lm.cli.errors import exit_on_user_error, refuse_unknown_keys
from xlstm_lm.cli.loading import PretrainedFolder, read_pretrained_folder
from xlstm_lm.cli.schemas import TrainConfig, register_configs, to_config
from xlstm_lm.data import TokenDataModule
from xlstm_lm.data.datamodule import changed_settings
from xlstm_lm.data.synthetic import TaskConfig
from xlstm_lm.data.task_datamodule import TaskDataModule
from xlstm_lm.models import build_model
from xlstm_lm.models.components import round_up
from xlstm_lm.models.io import TOKENIZER_FILE, check_state_dict_matches, save_pretrained
from xlstm_lm.training.callbacks import CheckpointOnInterrupt, TrainingInterrupted
from xlstm_lm.training.checkpointing import (CHECKPOINT_DIR, LAST, check_resume_compatible, find_resume_checkpoint,
                                             model_weights, run_checkpoints)
from xlstm_lm.training.module import LanguageModelModule, check_stateful
from xlstm_lm.training.trainer import build_trainer, is_first_process

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).parents[1] / "configs")  # the repository's configs/ (linked), or the installed copy
# Model settings that choose how a model computes, not what it computes: a run keeps its own over init_from's.
EXECUTION_SETTINGS = ("backend", "chunk_size")


def resolve_vocab_size(model, tokenizer_vocab: int):
    """The model's vocabulary: the tokenizer's rounded up to 64, or the configured one if large enough."""
    if model.vocab_size is None:
        return dataclasses.replace(model, vocab_size=round_up(tokenizer_vocab, 64))
    if model.vocab_size < tokenizer_vocab:
        raise ValueError(
            f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer_vocab}): "
            "remove the override (it follows the tokenizer) or set tokenizer.vocab_size to match"
        )
    return model


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`auto`: the newest checkpoint in run_dir (last.ckpt or a SLURM pre-emption one), None in a fresh run."""
    if ckpt_path != "auto":
        return ckpt_path
    found = find_resume_checkpoint(run_dir)
    if found is not None:
        log.info("resuming from %s (ckpt_path=auto finds the newest checkpoint of the run directory)", found)
    return str(found) if found is not None else None


def check_hardware(config: TrainConfig) -> None:
    """Fail before data preparation when the trainer or the kernels ask for a GPU this machine lacks."""
    accelerator = config.trainer.accelerator
    on_gpu = accelerator in ("gpu", "cuda")
    if on_gpu and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but torch sees no CUDA GPU on this machine: use "
                         "trainer=cpu (trainer.strategy=ddp trainer.devices=2 for DDP on CPU processes)")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if getattr(config.model, "backend", "auto") == "triton" and not on_gpu and not interpreted:
        raise ValueError("model.backend=triton runs on CUDA GPUs: train with trainer=gpu, or use model.backend=auto "
                         "(the Triton kernels on a GPU, native PyTorch elsewhere)")


def check_fresh_run_dir(ckpt_path: str | None, run_dir: Path) -> None:
    """ckpt_path=null starts afresh: refuse a run_dir that already holds a run, whose checkpoints, export and
    logs the new run would mix with its own."""
    if ckpt_path is None and run_checkpoints(run_dir):
        raise ValueError(
            f"run_dir={run_dir} already holds a run's checkpoints and ckpt_path=null starts a new one: resume it "
            "with ckpt_path=auto (the default), or give the new run another run_dir"
        )


def describe(model_config, num_params: int, num_non_embedding: int) -> str:
    arch = model_config.architecture
    if arch == "xlstm":
        arch = f"xLSTM[{model_config.ratio}] with sLSTM at {model_config.slstm_positions}"
    depth = (f"{model_config.layers} layers" if hasattr(model_config, "layers")
             else f"{model_config.num_blocks} blocks, {model_config.num_heads} heads")
    return (f"{arch}: {depth}, D={model_config.embedding_dim}, vocab {model_config.vocab_size}: "
            f"{num_params / 1e6:.2f}M parameters ({num_non_embedding / 1e6:.2f}M without the input embedding)")


def train(cfg: DictConfig | TrainConfig, run_dir: str | Path,
          accepted: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Train one model; returns the final metrics (validation loss and perplexity included). `accepted` is
    called once the run may go ahead, before anything is written into run_dir."""
    config: TrainConfig = to_config(cfg)
    run_dir = Path(run_dir)
    quiet_library_notices()
    check_hardware(config)
    config, start = starting_point(config)
    check_stateful(config.model.architecture, getattr(config.data, "stateful", False))
    L.seed_everything(config.seed, workers=True)
    datamodule = prepare_data(config)
    module = build_module(config, datamodule)
    ckpt_path = checkpoint_to_resume(config.ckpt_path, run_dir, module, datamodule)
    load_starting_weights(module, start, ckpt_path)
    if accepted is not None:
        accepted()
    trainer = build_trainer(config.trainer, config.logger, run_dir)
    fit(trainer, module, datamodule, ckpt_path)
    checkpoint_last_step(trainer, config, run_dir)
    metrics = final_metrics(trainer, module, datamodule)
    export(trainer, config, module, datamodule, run_dir, metrics)
    return metrics


def starting_point(config: TrainConfig) -> tuple[TrainConfig, PretrainedFolder | None]:
    """init_from: the model folder the run starts from, read and checked before any data work. The composed model
    config must be the folder's (its vocabulary is taken when the run sets none; backend and chunk size stay the
    run's), and the run tokenizes with the folder's tokenizer, whose ids the weights were trained on."""
    if config.init_from is None:
        return config, None
    start = read_pretrained_folder(config.init_from)
    model = config.model
    if model.vocab_size is None:
        model = dataclasses.replace(model, vocab_size=start.config.vocab_size)
    theirs, ours = dataclasses.asdict(start.config), dataclasses.asdict(model)
    if theirs["architecture"] != ours["architecture"]:
        raise ValueError(f"init_from={config.init_from} holds a {theirs['architecture']!r} model ({start.kind}) but "
                         f"the composed model is {ours['architecture']!r}: compose the folder's architecture (a "
                         "Hugging Face xLSTM folder is model=xlstm_large)")
    keys = sorted(set(theirs) - set(EXECUTION_SETTINGS))
    if diffs := changed_settings(theirs, ours, keys, prefix="model.", saved_in="folder"):
        overrides = " ".join(f"model.{key}={_override_value(theirs[key])}" for key in keys
                             if theirs[key] != ours.get(key))
        raise ValueError(f"init_from={config.init_from} holds another model than the composed one "
                         f"({', '.join(diffs)}): compose the folder's model, e.g. with {overrides}")
    tokenizer = config.tokenizer
    if start.tokenizer_file is None:
        log.warning("init_from=%s has no %s: the run tokenizes with the composed tokenizer, which must be the one the "
                    "weights were trained with", config.init_from, TOKENIZER_FILE)
    else:
        if tokenizer.path is not None or tokenizer.pretrained is not None:
            log.info("init_from: the run tokenizes with the folder's %s, not tokenizer.path/pretrained",
                     TOKENIZER_FILE)
        tokenizer = dataclasses.replace(tokenizer, path=str(start.tokenizer_file.resolve()), pretrained=None)
    return dataclasses.replace(config, model=model, tokenizer=tokenizer), start


def _override_value(value) -> str:
    """A config value as a Hydra override writes it."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class DropMessages(logging.Filter):
    """Drops log records whose message contains one of `parts`."""

    def __init__(self, *parts: str):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.getMessage() for part in self.parts)


# an advertisement on every run; Lightning's line on a second Ctrl-C (`fit` says what happened)
LIGHTNING_NOTICES = DropMessages("try installing [litlogger]", "Detected KeyboardInterrupt, attempting graceful")


def quiet_library_notices() -> None:
    """Silence what the libraries print on every run without telling our users anything: Lightning's tip about
    its cloud logger, torch's deprecation of a class Lightning's internals still build, and on a restart that
    the run's checkpoint and log folders are not empty (expected; the earlier metrics are kept, see
    keep_previous_metrics)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if LIGHTNING_NOTICES not in rank_zero.filters:
        rank_zero.addFilter(LIGHTNING_NOTICES)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            r"lightning\.pytorch\.utilities\._pytree")
    warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty", UserWarning,
                            r"lightning\.pytorch\.callbacks\.model_checkpoint")
    warnings.filterwarnings("ignore", r"Experiment logs directory .* exists and is not empty", UserWarning,
                            r"lightning\.fabric\.loggers\.csv_logs")


def prepare_data(config: TrainConfig) -> TokenDataModule | TaskDataModule:
    """The data module with its cache prepared: first, since the model's vocabulary follows the tokenizer. A
    synthetic task (data=parity, ...) needs no cache and brings its own fixed vocabulary."""
    if isinstance(config.data, TaskConfig):
        if not config.tokenizer.trained:
            raise ValueError(f"data={config.data.task} has its own fixed vocabulary: leave tokenizer.path and "
                             "tokenizer.pretrained unset")
        return TaskDataModule(config.data, seed=config.seed)
    datamodule = TokenDataModule(config.data, config.tokenizer, seed=config.seed)
    datamodule.prepare_data()
    return datamodule


def build_module(config: TrainConfig, datamodule: TokenDataModule) -> LanguageModelModule:
    """The LightningModule with the tokenizer's vocabulary and the tokenizer itself (every checkpoint carries
    it); logs the model's size, since the config alone does not tell it."""
    model_config = resolve_vocab_size(config.model, datamodule.vocab_size)
    module = LanguageModelModule.from_configs(model_config, config.optimizer, config.scheduler,
                                              config.trainer.max_steps, config.reset_at_doc_starts,
                                              datamodule.tokenizer_json, parallel=config.trainer,
                                              stateful=getattr(config.data, "stateful", False))
    log.info(describe(model_config, module.model.num_parameters(), module.model.num_parameters(exclude_embedding=True)))
    if config.reset_at_doc_starts and not module.model.supports_doc_starts:
        log.warning("%s cannot reset its memory at document starts: windows are read straight through",
                    model_config.architecture)
    return module


def checkpoint_to_resume(ckpt_path: str | None, run_dir: Path, module: LanguageModelModule,
                         datamodule: TokenDataModule) -> str | None:
    """The checkpoint to resume from (None: a fresh run), refused unless it fits this run: decided before the
    trainer exists, as building its logger already changes the run directory."""
    check_fresh_run_dir(ckpt_path, run_dir)
    ckpt_path = resolve_ckpt_path(ckpt_path, run_dir)
    if ckpt_path:
        check_resume_compatible(ckpt_path, module, datamodule)
    return ckpt_path


def load_starting_weights(module: LanguageModelModule, start: PretrainedFolder | None, ckpt_path: str | None) -> None:
    """A new run with init_from starts from the folder's weights; a resumed one continues from its checkpoint,
    which already grew from them."""
    if start is None:
        return
    if ckpt_path:
        log.info("init_from=%s is not read again: the run resumes from %s", start.path, ckpt_path)
        return
    weights = start.weights()
    check_state_dict_matches(module.model, weights, source=str(start.path))
    module.model.load_state_dict(weights, strict=not module.model.config.tie_embeddings)  # tied: stored once
    log.info("the model starts from the weights of %s (%s)", start.path, start.kind)


def fit(trainer: L.Trainer, module: LanguageModelModule, datamodule: TokenDataModule, ckpt_path: str | None) -> None:
    """Train; a Ctrl-C (already checkpointed by the trainer) ends the program with exit status 130, as Ctrl-C
    ends any program, and without the final validation and export. So does a second Ctrl-C, which stops at
    once (Lightning shuts down and exits 1; its checkpoint files stay as they were)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except TrainingInterrupted as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # checkpointed and leaving: another Ctrl-C has nothing to stop
        log.warning("%s: run the same command to resume from it (no final validation or export)", stop)
        raise SystemExit(130) from None  # the exit status of a program ended by Ctrl-C
    except SystemExit:
        interrupt = next(callback for callback in trainer.callbacks if isinstance(callback, CheckpointOnInterrupt))
        if not interrupt.stopped_at_once:
            raise
        log.warning("second Ctrl-C: stopped at once at step %d, a checkpoint being written abandoned; run the same "
                    "command to resume from the newest checkpoint written (%s)", trainer.global_step,
                    interrupt.checkpoint.parent)
        raise SystemExit(130) from None


def checkpoint_last_step(trainer: L.Trainer, config: TrainConfig, run_dir: Path) -> None:
    """Write last.ckpt when the step checkpoints missed the last steps, so the same command again does not train
    them a second time."""
    if trainer.global_step % config.trainer.checkpoint_every_n_steps:
        trainer.save_checkpoint(run_dir / CHECKPOINT_DIR / LAST, weights_only=False)  # the full training state


def final_metrics(trainer: L.Trainer, module: LanguageModelModule, datamodule: TokenDataModule) -> dict[str, float]:
    """The metrics of the run's end, validated again unless the last validation already saw the final weights."""
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if module.last_validated_step != trainer.global_step:  # always report the final weights
        trainer.validate(module, datamodule=datamodule)
        metrics.update({name: float(value) for name, value in trainer.callback_metrics.items()})
    return metrics


def export(trainer: L.Trainer, config: TrainConfig, module: LanguageModelModule, datamodule: TokenDataModule,
           run_dir: Path, metrics: dict[str, float]) -> None:
    """Write <run_dir>/export (weights, model config, tokenizer, training config), which inference and other
    runs read without Lightning, and log the run's result."""
    if config.trainer.strategy == "fsdp" and config.trainer.fsdp.state_dict_type == "sharded":
        log.warning("no export: FSDP checkpoints are sharded (trainer.fsdp.state_dict_type=sharded); consolidate "
                    "one with `python -m lightning.fabric.utilities.consolidate_checkpoint <run>/checkpoints/last.ckpt`")
        return
    # Note: a collective under FSDP (rank 0 receives the gathered full weights); the module's own state elsewhere.
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        export_model = build_model(module.hparams["model"])
        export_model.load_state_dict(model_weights(state))
        export_dir = save_pretrained(export_model, run_dir / "export")
        (export_dir / TOKENIZER_FILE).write_text(datamodule.tokenizer_json)
        OmegaConf.save(OmegaConf.structured(config), export_dir / "train_config.yaml")
        log.info("steps %d, validation loss %.4f, perplexity %.2f; export in %s", trainer.global_step,
                 metrics.get("val/loss", float("nan")), metrics.get("val/ppl", float("nan")), export_dir)


class HeldLogFiles(logging.Handler):
    """Holds the records meant for the root logger's log files (Hydra's train.log) until `deliver`, which writes
    them there and hands the files back their place; undelivered (a refused run), the files stay untouched."""

    def __init__(self):
        super().__init__()
        root = logging.getLogger()
        self.files = [handler for handler in root.handlers if isinstance(handler, logging.FileHandler)]
        self.records: list[logging.LogRecord] = []
        for handler in self.files:
            root.removeHandler(handler)
        root.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def deliver(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        for handler in self.files:
            for record in self.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
            root.addHandler(handler)
        self.records = []


def write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's record of the command in run_dir/.hydra (config.yaml, hydra.yaml, overrides.yaml), as Hydra
    writes it; by the first process only (the others of a DDP run are the same command)."""
    if not is_first_process():
        return
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    hydra_config = HydraConfig.instance().cfg
    (record / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (record / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_config))
    (record / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_config.hydra.overrides.task))


register_configs()


def main() -> None:
    """The command: misspelt keys are refused in our words before Hydra runs the job."""
    refuse_unknown_keys(CONFIG_DIR, "train")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> float:
    """Returns the final validation loss: the objective of sweepers such as Optuna."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    held = HeldLogFiles()

    def accepted() -> None:
        write_run_record(cfg, run_dir)
        held.deliver()

    with exit_on_user_error(log):
        return train(cfg, run_dir, accepted)["val/loss"]


if __name__ == "__main__":
    main()
