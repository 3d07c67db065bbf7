"""Loading and saving models without Lightning.

An export folder holds model.safetensors, config.json (the model config) and usually tokenizer.json; a
Lightning checkpoint holds the model config in its hyper-parameters, the weights under `model.` and the
tokenizer under `tokenizer_json`. `load_model` reads either.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model
from safetensors.torch import load_model as load_safetensors_into

from xlstm_lm.models import LanguageModel, build_model, model_config

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
    check_state_dict_matches(model, load_file(weights_path), source=weights_path)
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
    """A model and its tokenizer JSON (None when absent) from an export folder or a Lightning .ckpt file.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is neither an export folder nor a readable checkpoint, or its weights do not
            match its config.
    """
    path = Path(path)
    if path.is_dir():
        tokenizer_file = path / TOKENIZER_FILE
        return load_pretrained(path, map_location), tokenizer_file.read_text() if tokenizer_file.is_file() else None
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: give an export folder or a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        config = checkpoint["hyper_parameters"]["model"]
        weights = {name[len("model."):]: tensor for name, tensor in checkpoint["state_dict"].items()
                   if name.startswith("model.")}
    except Exception as error:  # a pickle, zip or key error all mean: not one of our checkpoints
        raise ValueError(
            f"{path} is not an xlstm-lm checkpoint ({type(error).__name__}: {error}); give an export folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE}) or a Lightning .ckpt written by xlstm-train"
        ) from error  # the cause stays in the traceback (HYDRA_FULL_ERROR=1 shows it)
    model = build_model(model_config(config))
    check_state_dict_matches(model, weights, source=str(path))
    model.load_state_dict(weights)
    return model.to(map_location), checkpoint.get("tokenizer_json")
