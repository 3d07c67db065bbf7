"""Checkpoints that survive faults: atomic writes, never NaN weights, every N steps and every T minutes,
and the newest checkpoint of a run directory found by itself on restart. The one module that reads the
checkpoint files: their model for inference, and whether a run may resume from one.

What a checkpoint file holds (a dict, as Lightning writes it with what the module and data module add):

    state_dict            the LightningModule's tensors: the plain model's, named `model.<parameter>`
    hyper_parameters      the LanguageModelModule's arguments: model, optimizer and scheduler (dicts of their
                          configs), max_steps, reset_at_doc_starts
    tokenizer_json        the tokenizer of the run's data (LanguageModelModule.on_save_checkpoint)
    TokenDataModule       the position in the training order and what fixes that order (its state_dict)
    carried_state         data.stateful only: per rank, the detached recurrent states its rows carry into the
                          next window (LanguageModelModule.on_save_checkpoint)
    global_step, loops, optimizer_states, lr_schedulers, callbacks, ...   Lightning's training state

A sharded FSDP checkpoint is a folder with this dict, less the tensors, in meta.pt.

Layout of a run directory:

    checkpoints/last.ckpt            the newest state: every N steps, every T minutes, on Ctrl-C, and at the
                                     end (by cli/train.py, when the last step is no multiple of N)
    checkpoints/stepNNNNNN.ckpt      the last K of the every-N-steps checkpoints
    checkpoints/best-stepNNNNNN.ckpt the lowest val/loss so far
    hpc_ckpt_<n>.ckpt                written by Lightning on SLURM's pre-emption signal before it requeues
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from xlstm_lm.data.datamodule import TokenDataModule, changed_settings
from xlstm_lm.models import LanguageModel, build_model, model_config
from xlstm_lm.models.io import CONFIG_FILE, WEIGHTS_FILE, check_state_dict_matches
from xlstm_lm.training.module import LanguageModelModule
from xlstm_lm.training.optim import lr_factor

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
MODEL_PREFIX = "model."  # the LanguageModelModule holds the plain model as `self.model`
TOKENIZER_KEY = "tokenizer_json"
log = logging.getLogger(__name__)


def first_nonfinite_tensor(state_dict: dict[str, Any]) -> Optional[str]:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.tmp` and renames it onto `<path>` (os.replace is atomic on POSIX), so a write that dies
    half-way leaves the previous checkpoint untouched; refuses to write weights that are not finite."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        bad = first_nonfinite_tensor(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise FloatingPointError(
                f"not writing {path}: parameter {bad} is NaN or infinite at step {checkpoint.get('global_step')}; "
                "the last good checkpoint stays. Lower optimizer.lr or keep trainer.nonfinite=skip")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except Exception as error:
            # A Ctrl-C inside torch.save unwinds through its zip writer, whose close then fails on the half-written
            # file ("unexpected pos") and would hide the KeyboardInterrupt that Lightning shuts down on
            if isinstance(error.__context__, KeyboardInterrupt):
                raise error.__context__ from None
            raise
        finally:
            temporary.unlink(missing_ok=True)


STEP_PREFIX, BEST_PREFIX = "step", "best-step"  # stepNNNNNN.ckpt, best-stepNNNNNN.ckpt


def checkpoint_callbacks(run_dir: Path, every_n_steps: int, every_minutes: Optional[float],
                         keep_last: int) -> list[Checkpoint]:
    """Every N steps (`last.ckpt` plus the last `keep_last` step files), every T minutes (`last.ckpt` only),
    and the best by val/loss, with their retention kept across restarts (`CheckpointRetention`). One
    ModelCheckpoint cannot count both steps and time, hence two; both write the same last.ckpt (without the
    version counter Lightning would name the second one's last-v1.ckpt)."""
    directory = str(run_dir / CHECKPOINT_DIR)
    steps = ModelCheckpoint(dirpath=directory, filename=STEP_PREFIX + "{step:06d}", auto_insert_metric_name=False,
                            every_n_train_steps=every_n_steps, save_last=True, save_top_k=keep_last,
                            monitor="step", mode="max",  # the highest steps are the latest
                            enable_version_counter=False)
    best = ModelCheckpoint(dirpath=directory, filename=BEST_PREFIX + "{step:06d}", auto_insert_metric_name=False,
                           monitor="val/loss", mode="min", save_top_k=1)
    callbacks = [steps, best]
    if every_minutes:
        callbacks.append(ModelCheckpoint(dirpath=directory, train_time_interval=timedelta(minutes=every_minutes),
                                         save_last=True, save_top_k=0, enable_version_counter=False))
    return [*callbacks, CheckpointRetention({STEP_PREFIX: steps, BEST_PREFIX: best})]


class CheckpointRetention(Checkpoint):
    """Keeps what the callbacks promise (the last K step checkpoints, the best) over any number of restarts.

    Lightning's ModelCheckpoint deletes only files it saved in its own process, and never the one the run
    resumed from, so each restart left the files of the earlier ones behind. At the start of training this
    adopts the directory's checkpoints of each callback into its bookkeeping (the step from the file name,
    the monitored value, e.g. val/loss, from the file), and after each save deletes the files the callback no
    longer keeps. Files (or sharded folders) at a step after the one the run resumed from belong to an
    abandoned continuation and are left until the run reaches their step. Rank 0 reads and deletes; the
    other ranks take its verdict, so all ranks judge the next checkpoint alike.

    Args:
        callbacks: the ModelCheckpoint of each file name prefix (`<prefix>NNNNNN.ckpt`).

    Note: a Checkpoint subclass so that Lightning runs it after the ModelCheckpoints (it orders them last).
    """

    def __init__(self, callbacks: dict[str, ModelCheckpoint]):
        self.callbacks = callbacks

    def on_train_start(self, trainer, pl_module):
        for prefix, callback in self.callbacks.items():
            kept = self._adopt(trainer, prefix, callback) if trainer.is_global_zero else None
            _set_kept(callback, trainer.strategy.broadcast(kept))
        self._prune(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._prune(trainer)

    def on_validation_end(self, trainer, pl_module):
        self._prune(trainer)

    def on_train_end(self, trainer, pl_module):
        self._prune(trainer)

    def _files(self, prefix: str, callback: ModelCheckpoint, step: int) -> dict[str, int]:
        """The callback's checkpoints in its directory up to `step`, by path (as the callback writes them)."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.ckpt")
        found = {}
        for name in os.listdir(callback.dirpath) if os.path.isdir(callback.dirpath) else ():
            match = pattern.fullmatch(name)
            if match and int(match[1]) <= step:
                found[os.path.join(callback.dirpath, name)] = int(match[1])
        return found

    def _adopt(self, trainer, prefix: str, callback: ModelCheckpoint) -> dict[str, float]:
        """The files the callback keeps among its own record and those on disk: its save_top_k best."""
        scores = {path: float(score) for path, score in callback.best_k_models.items() if os.path.exists(path)}
        for path, step in self._files(prefix, callback, trainer.global_step).items():
            if path not in scores:
                scores[path] = float(step) if callback.monitor == "step" else _saved_score(Path(path), callback)
        ranked = sorted(scores, key=scores.get, reverse=callback.mode == "max")
        keep = len(ranked) if callback.save_top_k < 0 else callback.save_top_k
        return {path: scores[path] for path in ranked[:keep]}

    def _prune(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        for prefix, callback in self.callbacks.items():
            for path in self._files(prefix, callback, trainer.global_step):
                if path not in callback.best_k_models:
                    log.info("removing %s (kept: the last step checkpoints and the best)", path)
                    trainer.strategy.remove_checkpoint(path)


def _saved_score(path: Path, callback: ModelCheckpoint) -> float:
    """The monitored value a checkpoint was saved with (the worst possible when it cannot be read)."""
    worst = float("inf") if callback.mode == "min" else float("-inf")
    try:
        state = load_training_checkpoint(path).get("callbacks", {}).get(callback.state_key, {})
    except (ValueError, FileNotFoundError):
        return worst
    score = state.get("current_score")
    return worst if score is None else float(score)


def _set_kept(callback: ModelCheckpoint, kept: dict[str, float]) -> None:
    """Make `kept` (path -> monitored value) the callback's top-k record, as its own saves would have left it."""
    callback.best_k_models = {path: torch.tensor(score) for path, score in kept.items()}
    if not kept:
        return
    best, worst = (max, min) if callback.mode == "max" else (min, max)
    callback.best_model_path = best(kept, key=kept.get)
    callback.best_model_score = callback.best_k_models[callback.best_model_path]
    if len(kept) == callback.save_top_k:
        callback.kth_best_model_path = worst(kept, key=kept.get)
        callback.kth_value = callback.best_k_models[callback.kth_best_model_path]


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning training checkpoint of this project, tensors memory-mapped (cheap to open for its metadata).

    Raises:
        FileNotFoundError: path does not exist.
        ValueError: path is an export, a weights file or anything else that is not such a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: give a .ckpt file, e.g. <run>/checkpoints/{LAST}")
    if path.is_dir():
        if (path / WEIGHTS_FILE).exists():
            raise ValueError(f"{path} is an exported model, not a training checkpoint: resume from "
                             f"<run>/{CHECKPOINT_DIR}/{LAST} (xlstm-eval and xlstm-generate read exports)")
        if not (path / "meta.pt").exists():
            raise ValueError(f"{path} is a folder but not a sharded FSDP checkpoint (it has no meta.pt)")
        path = path / "meta.pt"  # a sharded FSDP checkpoint: everything but the tensors is in meta.pt
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as error:
        # torch's own words (e.g. about mmap and zip files) mean nothing to our users
        reason = (f"it names code this installation lacks: {error}" if isinstance(error, (AttributeError, ImportError))
                  else "not a file torch.save wrote, or one cut short")
        raise ValueError(f"{path} is not a readable training checkpoint ({reason[:200]}): give a .ckpt written by "
                         f"xlstm-lm, e.g. <run>/{CHECKPOINT_DIR}/{LAST}") from error
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint or "global_step" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning training checkpoint of xlstm-lm (no hyper_parameters or "
                         "global_step): exported weights cannot be resumed from")
    return checkpoint


def find_resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint a restart of this run should continue from (the highest global step), None for a fresh run.

    Usually `checkpoints/last.ckpt`, but a kill can fall between a step file and last.ckpt, and a SLURM
    pre-emption writes `hpc_ckpt_<n>.ckpt`. Ranked by the step stored inside, not by file times (a copy of the
    run directory changes those); among equal steps last.ckpt wins (the best-stepN.ckpt of the same step may be
    newer), then the newer file. Unreadable files are skipped.

    Raises:
        ValueError: the run has checkpoints but none can be read (rather than silently starting afresh
            over them).
    """
    ranked, problems = [], []
    for path in run_checkpoints(run_dir):
        try:
            step = int(load_training_checkpoint(path)["global_step"])
            ranked.append((step, path.name == LAST, path.stat().st_mtime_ns, path))
        except (ValueError, FileNotFoundError) as error:
            log.warning("not resuming from %s: %s", path, error)
            problems.append(str(error))
    if problems and not ranked:
        raise ValueError(f"{run_dir} holds checkpoints but none can be resumed from ({'; '.join(problems)}): give "
                         "one with ckpt_path=PATH, or start afresh in another run_dir")
    return max(ranked, key=lambda ranking: ranking[:3])[3] if ranked else None


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run directory: checkpoints/*.ckpt and SLURM pre-emption ones."""
    return [*run_dir.glob(f"{CHECKPOINT_DIR}/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]


def model_weights(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain model's tensors in a LightningModule state dict (a checkpoint's, or the trainer's for the
    export), under the model's own parameter names."""
    return {name.removeprefix(MODEL_PREFIX): tensor for name, tensor in state_dict.items()
            if name.startswith(MODEL_PREFIX)}


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                               ) -> tuple[LanguageModel, Optional[str]]:
    """The model of a checkpoint file and its tokenizer JSON (None when absent), for inference.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is not a readable checkpoint of xlstm-lm, or its weights do not match its config.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: give an export folder or a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        config = checkpoint["hyper_parameters"]["model"]
        weights = model_weights(checkpoint["state_dict"])
    except Exception as error:  # a pickle, zip or key error all mean: not one of our checkpoints
        raise ValueError(
            f"{path} is not an xlstm-lm checkpoint ({type(error).__name__}: {error}); give an export folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE}) or a Lightning .ckpt written by xlstm-train"
        ) from error  # the cause stays in the traceback (HYDRA_FULL_ERROR=1 shows it)
    model = build_model(model_config(config))
    check_state_dict_matches(model, weights, source=str(path))
    model.load_state_dict(weights)
    return model.to(map_location), checkpoint.get(TOKENIZER_KEY)


def check_resume_compatible(ckpt_path: str, module: LanguageModelModule, datamodule: TokenDataModule) -> None:
    """Fail before training (and before the logger touches the run's files) when the checkpoint to resume is
    not a training checkpoint, or was trained with another model config, tokenizer, optimizer or scheduler
    settings, or data order; a changed trainer.max_steps (training longer) is allowed with a warning."""
    checkpoint = load_training_checkpoint(Path(ckpt_path))
    saved_tokenizer = checkpoint.get(TOKENIZER_KEY)
    if saved_tokenizer is not None and saved_tokenizer != module.tokenizer_json:
        raise ValueError(
            f"checkpoint {ckpt_path} was trained with another tokenizer than the data of this run, so its token ids "
            "mean other text. Resume with the same data= and tokenizer= settings as the original run."
        )
    saved = checkpoint["hyper_parameters"]
    model_diffs = _changed_hyper_parameters(saved, module.hparams, "model")
    if model_diffs:
        raise ValueError(
            f"checkpoint {ckpt_path} was trained with another model config ({', '.join(model_diffs)}). "
            "Resume with the same model=/size= overrides as the original run, or drop ckpt_path to start afresh."
        )
    schedule_diffs = [*_changed_hyper_parameters(saved, module.hparams, "optimizer", "optimizer."),
                      *_changed_hyper_parameters(saved, module.hparams, "scheduler", "scheduler.")]
    if schedule_diffs:
        raise ValueError(
            f"checkpoint {ckpt_path} was trained with other optimization settings ({', '.join(schedule_diffs)}). "
            "A resumed run continues the checkpoint's optimizer state and learning-rate schedule: an optimizer "
            "change would be ignored, a scheduler change would make the learning rate jump. Resume with the "
            "original values, or start a new run (another run_dir)."
        )
    saved_max_steps, max_steps = saved.get("max_steps"), module.hparams["max_steps"]
    step = checkpoint["global_step"]
    if max_steps <= step:
        log.warning("trainer.max_steps=%d is not above the checkpoint's step %d: nothing is left to train, the run "
                    "only validates and exports", max_steps, step)
    elif saved_max_steps is not None and saved_max_steps != max_steps:
        peak = module.optimizer_config.lr
        sched = module.scheduler_config
        before, after = (peak * lr_factor(step, sched.warmup_steps, total, sched.min_lr_ratio)
                         for total in (saved_max_steps, max_steps))
        log.warning("trainer.max_steps changed from %d to %d: the cosine schedule is stretched to the new length, "
                    "so the learning rate at step %d moves from %.3g to %.3g", saved_max_steps, max_steps, step,
                    before, after)
    data_state = checkpoint.get(type(datamodule).__qualname__)
    if data_state is not None:
        datamodule.setup("fit")  # memory-maps the splits (Lightning's own call later is cheap)
        datamodule.check_resumable(data_state)


def _changed_hyper_parameters(saved: dict[str, Any], current: dict[str, Any], group: str,
                              prefix: str = "") -> list[str]:
    """How the `group` config the checkpoint's hyper-parameters record differs now. Only settings both have are
    compared: one added since the checkpoint was written is not in it, and another architecture has other fields
    (its `architecture` differs, which says it all)."""
    recorded = saved.get(group) or {}
    if group == "model" and recorded:  # read as the model loaders read it (fields renamed or added since)
        recorded = asdict(model_config(recorded))
    return changed_settings(recorded, current[group], keys=sorted(set(recorded) & set(current[group])), prefix=prefix)
