"""A checkpoint and its tokenizer, ready to score or generate (xlstm-eval, xlstm-generate): the model in eval mode on
the device asked for; and the model folder a training run starts from (`train.py init_from=`).

Reads an export folder (`xlstm_lm.models.io`) or a Lightning .ckpt (`xlstm_lm.training.checkpointing`); the
tokenizer comes from the checkpoint unless a tokenizer.json is given, and must fit the model's vocabulary.
A run starts from our export or from a Hugging Face xLSTM folder (`xlstm_lm.interop.huggingface`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tokenizers import Tokenizer

from xlstm_lm.data.tokenizer import load_tokenizer, tokenizer_from_json
from xlstm_lm.interop.huggingface import read_hf_config, read_hf_weights, weights_from_hf
from xlstm_lm.models import LanguageModel, model_config
from xlstm_lm.models.io import CONFIG_FILE, TOKENIZER_FILE, load_model
from xlstm_lm.training.checkpointing import load_model_from_checkpoint

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """"auto" is the GPU when there is one, else the CPU; any other name is passed to torch.

    Raises:
        ValueError: not a device name, or a CUDA device on a machine where torch sees none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device={name} is not a device name (auto, cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but torch sees no CUDA GPU on this machine: use device=cpu or device=auto")
    return device


def load_checkpoint(path: str, tokenizer_path: Optional[str] = None,
                    device: torch.device | str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """Load a model for inference and the tokenizer it was trained with.

    Args:
        path: an export folder (config.json, model.safetensors, tokenizer.json) or a Lightning .ckpt.
        tokenizer_path: a tokenizer.json to use instead of the checkpoint's own.
        device: where the model goes.

    Returns:
        The model (eval mode) and the tokenizer.

    Raises:
        FileNotFoundError: no checkpoint at `path`, or no tokenizer anywhere.
        ValueError: not a checkpoint, or the tokenizer has more tokens than the model's vocabulary.
    """
    model, tokenizer_json = (load_model(path, map_location=device) if Path(path).is_dir()
                             else load_model_from_checkpoint(path, map_location=device))
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
        if tokenizer_json is not None and tokenizer.to_str() != tokenizer_from_json(tokenizer_json).to_str():
            log.warning("tokenizer_path=%s is not the tokenizer %s was trained with: its token ids mean other text, "
                        "so losses and samples are not comparable (leave tokenizer_path out to use the checkpoint's)",
                        tokenizer_path, path)
    elif tokenizer_json is not None:
        tokenizer = tokenizer_from_json(tokenizer_json)
    else:
        raise FileNotFoundError(f"checkpoint {path} carries no {TOKENIZER_FILE}: give one with tokenizer_path=PATH")
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the model of {path} only {model.config.vocab_size}: "
            "use the tokenizer the checkpoint was trained with"
        )
    return model.eval(), tokenizer



@dataclass(frozen=True)
class PretrainedFolder:
    """A model folder a training run starts from: our export or a Hugging Face xLSTM folder (NX-AI's layout).
    The config is read at once (cheap, checked before any data work); the weights only when they are used."""

    path: Path
    config: Any  # the model config dataclass, in our fields
    hugging_face: bool

    @property
    def kind(self) -> str:
        return "Hugging Face xLSTM folder" if self.hugging_face else "export"

    @property
    def tokenizer_file(self) -> Optional[Path]:
        """The folder's tokenizer.json, None when it has none."""
        path = self.path / TOKENIZER_FILE
        return path if path.is_file() else None

    def weights(self) -> dict[str, torch.Tensor]:
        """The folder's tensors under our parameter names (not yet checked against a model)."""
        weights = read_hf_weights(self.path)  # model.safetensors or its shards: both formats store them so
        return weights_from_hf(weights, self.config) if self.hugging_face else weights


def read_pretrained_folder(path: str) -> PretrainedFolder:
    """The folder `path` as a starting point for training.

    Raises:
        FileNotFoundError: `path` is not a folder with config.json.
        ValueError: its config.json is neither ours nor a Hugging Face xLSTM one, or has settings we cannot express.
    """
    folder = Path(path)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"init_from={path}: {config_file} not found; give an export folder (<run>/export) "
                                "or a Hugging Face xLSTM folder (config.json + model.safetensors)")
    try:
        fields = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"init_from={path}: {config_file} is not JSON ({error})") from error
    if "model_type" in fields:  # Hugging Face configs name their model type; ours name the architecture
        return PretrainedFolder(folder, read_hf_config(folder), hugging_face=True)
    if "architecture" not in fields:
        raise ValueError(f"init_from={path}: {config_file} is neither an xlstm-lm export's config (no 'architecture') "
                         "nor a Hugging Face one (no 'model_type')")
    return PretrainedFolder(folder, model_config(fields), hugging_face=False)
