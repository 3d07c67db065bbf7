"""A checkpoint and its tokenizer, ready to score or generate (xlstm-eval, xlstm-generate): the model in eval mode on
the device asked for.

Reads an export folder (`xlstm_lm.models.io`) or a Lightning .ckpt (`xlstm_lm.training.checkpointing`); the
tokenizer comes from the checkpoint unless a tokenizer.json is given, and must fit the model's vocabulary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Tokenizer

from xlstm_lm.data.tokenizer import load_tokenizer, tokenizer_from_json
from xlstm_lm.models import LanguageModel
from xlstm_lm.models.io import TOKENIZER_FILE, load_model
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

