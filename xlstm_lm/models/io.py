"""Loading and saving models without Lightning: export folders.

An export folder holds model.safetensors, config.json (the model config) and usually tokenizer.json. Lightning
checkpoints (.ckpt) are training's format, read by `xlstm_lm.training.checkpointing`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from safetensors.torch import load_model as load_safetensors_into

from xlstm_lm.models import LanguageModel, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def save_pretrained(model: LanguageModel, directory: str | Path) -> Path:
    """Write model.safetensors and config.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    save_model(model, str(directory / WEIGHTS_FILE))
    return directory


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> LanguageModel:
    """Rebuild the model from config.json and load its weights; mismatches are one clear error."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} not found: an export folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by xlstm-train into <run dir>/export)"
            )
    model = build_model(json.loads((directory / CONFIG_FILE).read_text()))
    weights_path = str(directory / WEIGHTS_FILE)
    try:
        weights = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a readable weights file (cut short or damaged: {error}); copy or "
                         "export the model again") from error
    check_state_dict_matches(model, weights, source=weights_path)
    load_safetensors_into(model, weights_path, device=str(map_location))  # restores tied weights stored once
    return model.to(map_location)


def check_state_dict_matches(model: torch.nn.Module, weights: dict, source: str) -> None:
    """Raise ValueError listing missing, unexpected and mis-shaped tensors of `weights` for `model`."""
    expected = model.state_dict()
    missing = set(expected) - set(weights)
    tied = {"embedding.weight", "head.weight"}
    if model.config.tie_embeddings and len(missing & tied) == 1:
        missing -= tied  # the shared tensor is stored under one of its names
    missing = sorted(missing)
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(
        f"{name}: file {tuple(weights[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(weights) & set(expected)
        if weights[name].shape != expected[name].shape
    )
    if missing or unexpected or mis_shaped:
        problems = [f"{label}: {items[:5]}{' ...' if len(items) > 5 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected),
                                         ("shape mismatch", mis_shaped)) if items]
        raise ValueError(
            f"weights in {source} do not match the model config ({'; '.join(problems)}). "
            "Use the config the weights were trained with (the config.json or the run's .hydra/config.yaml)."
        )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LanguageModel, str | None]:
    """The model of the export folder `path` and its tokenizer JSON (None when the folder has no tokenizer.json).

    Raises:
        FileNotFoundError: `path` lacks config.json or model.safetensors.
        ValueError: the weights do not match the config.
    """
    tokenizer_file = Path(path) / TOKENIZER_FILE
    return load_pretrained(path, map_location), tokenizer_file.read_text() if tokenizer_file.is_file() else None
