"""`xlstm-eval`: perplexity and bits per byte of checkpoints over long contexts (DESIGN.md §12).

    xlstm-eval ckpt=outputs/<date>/<time>/export eval.context_lengths=[512,2048,8192]
    xlstm-eval ckpt=[run_a/export,run_b/checkpoints/last.ckpt] data.files=[book.txt]

Prints a table and writes eval.json and eval.png into the run directory
(outputs/eval/<date>/<time>/); a run trained on a synthetic task (data=parity, mqar, ...) is scored by answer
accuracy against test length instead (`task.lengths=[40,256] task.batches=8`). `evaluate(cfg, run_dir)` does the
work and returns the report (tests call it); `main` is the thin Hydra entry point. The standard benchmarks
(lambada_openai, hellaswag, wikitext, ...) run through lm-evaluation-harness where the Hugging Face hub is reachable:

    xlstm-lm-eval --model xlstm_lm --model_args pretrained=<export> --tasks lambada_openai --batch_size 8
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xlstm_lm.cli.errors import exit_on_user_error, refuse_unknown_keys
from xlstm_lm.cli.loading import load_checkpoint, resolve_device
from xlstm_lm.cli.schemas import EvalConfig, register_eval_configs, to_config
from xlstm_lm.cli.train import CONFIG_DIR
from xlstm_lm.data.corpus import default_root
from xlstm_lm.data.synthetic import is_task, task_config
from xlstm_lm.evaluation.accuracy import format_accuracy_table, plot_accuracy, score_task
from xlstm_lm.evaluation.documents import EvalDataConfig, load_documents
from xlstm_lm.evaluation.perplexity import (ContextResult, PeakMemory, encode_documents, evaluate_context,
                                            join_documents)
from xlstm_lm.evaluation.plot import plot_results

log = logging.getLogger(__name__)
JSON_FILE = "eval.json"
PLOT_FILE = "eval.png"


def evaluate(cfg: DictConfig | EvalConfig, run_dir: str | Path) -> dict[str, Any]:
    """Score every checkpoint at every context length; write the JSON and the plot into `run_dir`.

    Returns:
        The report written to eval.json: device, memory measure, data and one row per
        (checkpoint, context length).
    """
    if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "ckpt"):
        raise ValueError("ckpt is required: ckpt=<run dir>/export, a .ckpt file, or ckpt=[a,b] to compare")
    config: EvalConfig = to_config(cfg)
    for path in config.checkpoints:  # fail before any work on a later checkpoint
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist: give an export folder or a .ckpt file")
    trained = [trained_config(path) for path in config.checkpoints]
    if any(is_task(run.get("data", {})) for run in trained):
        return evaluate_task(config, trained, Path(run_dir))
    documents = load_documents(config.data)
    device = resolve_device(config.device)
    results: list[tuple[str, list[ContextResult]]] = []
    for path in config.checkpoints:
        held_out = held_out_note(path, config.data)
        if held_out:
            log.log(logging.WARNING if held_out[0] else logging.INFO, "%s", held_out[1])
        model, tokenizer = load_checkpoint(path, config.tokenizer_path, device)
        encoded = encode_documents(documents, tokenizer)
        if config.data.concatenate:
            encoded = [join_documents(encoded)]
        log.info("%s: %s, %.2fM parameters, %d tokens", path, type(model).__name__,
                 model.num_parameters() / 1e6, sum(document.num_labels for document in encoded))
        rows = [evaluate_context(model, encoded, length, config.eval, device)
                for length in sorted(set(config.eval.context_lengths))]
        results.append((path, rows))
        del model

    report = {
        "device": str(device),
        "memory": PeakMemory.describe(device),
        "data": {**asdict(config.data), "documents": len(documents),
                 "bytes": sum(document.num_bytes for document in documents)},
        "results": [{"checkpoint": label, **asdict(row)} for label, rows in results for row in rows],
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JSON_FILE).write_text(json.dumps(report, indent=2) + "\n")
    plot_results([(checkpoint_label(path), rows) for path, rows in results], run_dir / PLOT_FILE)
    print(format_table(results))
    print(f"peak memory: {report['memory']}")
    print(f"wrote {run_dir / JSON_FILE} and {run_dir / PLOT_FILE}")
    return report


def held_out_mismatch(checkpoint: str, data: EvalDataConfig) -> str | None:
    """How the folder split `data` scores differs from the split `checkpoint` was trained with, or None when it
    does not (or when that cannot be told: other data kinds, no training config beside the checkpoint).
    """
    trained = _trained_folder(checkpoint, data)
    if trained is None:
        return None

    def same(key: str) -> bool:
        if key == "root":
            return _folder(trained.get(key)) == _folder(data.root)
        return trained.get(key) == getattr(data, key)

    changed = [f"data.{key} {trained.get(key)!r} in training vs {getattr(data, key)!r} here"
               for key in ("root", "glob", "include_tests", "val_fraction") if not same(key)]
    return "; ".join(changed) or None


def held_out_note(checkpoint: str, data: EvalDataConfig) -> tuple[bool, str] | None:
    """What to tell when the 'val' split scored here is not the one `checkpoint` held out, or None.

    Only the folder settings of the training config are compared, not the texts. A folder apart from the
    training folder (neither inside the other) holds none of its training files: that is told, not warned.

    Returns:
        (whether the scored documents may include ones it trained on, the message).
    """
    mismatch = held_out_mismatch(checkpoint, data)
    if mismatch is None:
        return None
    trained, here = _folder(_trained_folder(checkpoint, data).get("root")), _folder(data.root)
    compared = f"compared the corpus settings of its training config with these ({mismatch}), not the texts"
    if not (trained.is_relative_to(here) or here.is_relative_to(trained)):
        return False, (f"{checkpoint}: scoring the 'val' split of {here}, a folder apart from the one it was trained "
                       f"on ({trained}), so it holds none of the files it was trained on ({compared})")
    return True, (f"{checkpoint}: the 'val' split scored here is not the one it held out in training, so it may "
                  f"include documents it trained on ({compared}): give data.root, data.glob, data.include_tests and "
                  "data.val_fraction as in training")


def _trained_folder(checkpoint: str, data: EvalDataConfig) -> dict[str, Any] | None:
    """The training data config of a checkpoint trained on a folder, when `data` scores a folder's 'val' split."""
    if data.files or data.split != "val":
        return None
    trained = trained_config(checkpoint).get("data")
    return trained if trained is not None and trained.get("kind", "folder") == "folder" else None


def _folder(root: str | None) -> Path:
    """The folder a data.root names (None: the standard library)."""
    return default_root() if root is None else Path(root).expanduser().resolve()


def trained_config(checkpoint: str) -> dict[str, Any]:
    """The training config of a checkpoint ({} when there is none to read).

    Note: the training config is export/train_config.yaml, beside an export or in the run of a .ckpt.
    """
    path = Path(checkpoint)
    config_file = (path if path.is_dir() else path.parent.parent / "export") / "train_config.yaml"
    return OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.is_file() else {}


def evaluate_task(config: EvalConfig, trained: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    """Answer accuracy against test length of checkpoints trained on one synthetic task (`trained`: their
    training configs); writes eval.json and eval.png into `run_dir` and prints the table."""
    tasks = sorted({str(run.get("data", {}).get("task", "documents")) for run in trained})
    if len(tasks) > 1:
        raise ValueError(f"ckpt: compare checkpoints of one synthetic task, or language models, not a mix ({tasks})")
    device = resolve_device(config.device)
    results = []
    for path, run in zip(config.checkpoints, trained):
        task = task_config(run["data"])
        model, _ = load_checkpoint(path, config.tokenizer_path, device)
        lengths = sorted(set(config.task.lengths or task.test_lengths))
        results.append((path, task, score_task(model, task, run["seed"], lengths, config.task.batches, device)))
        del model
    report = {"device": str(device), "task": asdict(results[0][1]),
              "results": [{"checkpoint": path, **asdict(row)} for path, _, rows in results for row in rows]}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JSON_FILE).write_text(json.dumps(report, indent=2) + "\n")
    labelled = [(checkpoint_label(path), rows) for path, _, rows in results]
    first = results[0][1]
    plot_accuracy(labelled, run_dir / PLOT_FILE, (first.min_length, first.max_length))
    print(format_accuracy_table(labelled))
    print(f"wrote {run_dir / JSON_FILE} and {run_dir / PLOT_FILE}")
    return report


def checkpoint_label(path: str) -> str:
    """A short legend name: the run folder of `<run>/export`, `<run>/<file>` for a checkpoint file."""
    path = Path(path)
    if path.name == "export":
        return path.parent.name
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def format_table(results: list[tuple[str, list[ContextResult]]]) -> str:
    """One line per (checkpoint, context length): loss, perplexity, bits per byte, tokens, speed, memory."""
    header = ("checkpoint", "context", "loss", "ppl", "bpb", "tokens", "tok/s", "mem MiB", "note")
    lines = [header]
    for label, rows in results:
        for row in rows:
            if row.skipped:
                lines.append((label, str(row.context_length), "-", "-", "-", "-", "-", "-", row.skipped))
                continue
            lines.append((label, str(row.context_length), f"{row.loss:.4f}", f"{row.perplexity:.2f}",
                          f"{row.bits_per_byte:.4f}", str(row.tokens), f"{row.tokens_per_second:.0f}",
                          f"{row.peak_memory_mib:.0f}",
                          f"documents shorter: longest window {row.longest_window}" if row.note else ""))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    return "\n".join("  ".join([cell.ljust(width) for cell, width in zip(line, widths)] + [line[-1]]).rstrip()
                     for line in lines)


register_eval_configs()


def main() -> None:
    """The command: misspelt keys are refused in our words before Hydra runs the job."""
    refuse_unknown_keys(CONFIG_DIR, "eval")
    _main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
