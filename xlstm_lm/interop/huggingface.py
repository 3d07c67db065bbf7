"""Hugging Face xLSTM folders (NX-AI's xLSTM-7B layout, `transformers.xLSTMForCausalLM`) in and out.

A Hugging Face xLSTM folder holds config.json (model_type "xlstm"), the weights in model.safetensors or in
shards listed by model.safetensors.index.json, and usually the tokenizer. It is our `xlstm_large`
architecture with other names: `import_folder` turns it into our export (config.json + model.safetensors +
tokenizer.json), `export_folder` turns our `xlstm_large` export into a folder `from_pretrained` loads. Every
tensor is carried bit for bit (fused weights are split and concatenated, never recomputed); a setting our
model cannot express is refused by name.

Names, ours <- theirs (per block N; `weight_mode` "fused" stores the groups marked * as one matrix):
    embedding            backbone.embeddings              final_norm  backbone.out_norm      head  lm_head
    blocks.N.norm        norm_mlstm                       ffn_norm    norm_ffn
    q, k, v, o           mlstm_layer.q, .k, .v, .ogate_preact    * fused: mlstm_layer.qkv_opreact
    igate, fgate         mlstm_layer.igate_preact, .fgate_preact * fused: mlstm_layer.ifgate_preact
    head_norm, out       mlstm_layer.multihead_norm, .out_proj
    ffn.up = [gate; up]  ffn.proj_up_gate, ffn.proj_up           * fused: ffn.proj_up_gate_z
    ffn.down             ffn.proj_down
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xlstm_lm.data.tokenizer import EOS_TOKEN, eos_id, load_tokenizer
from xlstm_lm.models import XLSTMLargeConfig, build_model
from xlstm_lm.models.io import (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, check_state_dict_matches, load_pretrained,
                                save_pretrained)

INDEX_FILE = "model.safetensors.index.json"
WEIGHT_MODES = ("single", "fused")
# Settings of the Hugging Face config that our model has no counterpart for: the only value it can take.
FIXED_SETTINGS = {"use_bias": False, "v_dim_factor": 1.0, "add_out_norm": True,
                  "norm_reduction_force_float32": True}  # our norms reduce in float32 in every dtype
# What transformers' AutoTokenizer needs beside tokenizer.json: the fast tokenizer class and the special tokens
# (our end-of-document token begins, ends and pads).
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
                    "pad_token": EOS_TOKEN, "add_prefix_space": False}
# Hugging Face name -> ours, where the meaning is the same.
CONFIG_NAMES = {"vocab_size": "vocab_size", "hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks",
                "num_heads": "num_heads", "qk_dim_factor": "qk_factor", "ffn_proj_factor": "ffn_factor",
                "ffn_round_up_to_multiple_of": "ffn_multiple_of", "gate_soft_cap": "gate_soft_cap",
                "output_logit_soft_cap": "logit_soft_cap", "norm_eps": "norm_eps", "eps": "cell_eps",
                "tie_word_embeddings": "tie_embeddings", "chunk_size": "chunk_size"}
# the block's tensors that keep their meaning under another name (single weight mode)
BLOCK_NAMES = {"norm": "norm_mlstm", "q": "mlstm_layer.q", "k": "mlstm_layer.k", "v": "mlstm_layer.v",
               "o": "mlstm_layer.ogate_preact", "igate": "mlstm_layer.igate_preact",
               "fgate": "mlstm_layer.fgate_preact", "head_norm": "mlstm_layer.multihead_norm",
               "out": "mlstm_layer.out_proj", "ffn_norm": "norm_ffn", "ffn.down": "ffn.proj_down"}
# our tensors that weight_mode "fused" stores inside qkv_opreact and ifgate_preact
FUSED_IN_ONE = ("q", "k", "v", "o", "igate", "fgate")


def config_from_hf(hf: dict) -> XLSTMLargeConfig:
    """Our config for a Hugging Face xLSTM config.json.

    Raises:
        ValueError: not an xLSTM config, or settings our model cannot express (named).
    """
    if hf.get("model_type") != "xlstm":
        raise ValueError(f"config.json describes a {hf.get('model_type')!r} model: only Hugging Face xLSTM folders "
                         "(model_type 'xlstm', NX-AI's xLSTM-7B layout) can be imported")
    unsupported = [f"{name}={hf[name]!r} (we support {value!r})" for name, value in FIXED_SETTINGS.items()
                   if name in hf and hf[name] != value]
    if hf.get("weight_mode", "single") not in WEIGHT_MODES:
        unsupported.append(f"weight_mode={hf['weight_mode']!r} (we read {' or '.join(WEIGHT_MODES)})")
    if unsupported:
        raise ValueError(f"the model's settings {', '.join(unsupported)} have no counterpart in our xlstm_large "
                         "model; it cannot be imported without changing what it computes")
    if "hidden_size" not in hf and "embedding_dim" in hf:  # older configs name the width embedding_dim only
        hf = {**hf, "hidden_size": hf["embedding_dim"]}
    missing = [name for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads") if name not in hf]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}")
    return XLSTMLargeConfig(**{ours: hf[theirs] for theirs, ours in CONFIG_NAMES.items() if theirs in hf})


def config_to_hf(config: XLSTMLargeConfig, weight_mode: str, eos_token_id: int | None) -> dict:
    """A Hugging Face xLSTM config.json for our config (`from_pretrained` reads it).

    Raises:
        ValueError: a per-head norm eps other than norm_eps (one eps serves every norm there).
    """
    if config.head_norm_eps is not None and config.head_norm_eps != config.norm_eps:
        raise ValueError(f"model.head_norm_eps={config.head_norm_eps} differs from norm_eps={config.norm_eps}: a "
                         "Hugging Face xLSTM has one eps for every norm, so this model cannot be exported exactly")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
    ours = asdict(config)
    hf = {theirs: ours[name] for theirs, name in CONFIG_NAMES.items()}
    hf |= {"model_type": "xlstm", "architectures": ["xLSTMForCausalLM"], "embedding_dim": config.embedding_dim,
           "num_blocks": config.num_blocks, "weight_mode": weight_mode, **FIXED_SETTINGS}
    if eos_token_id is not None:
        hf |= {"eos_token_id": eos_token_id, "bos_token_id": eos_token_id, "pad_token_id": eos_token_id}
    return hf


def weights_from_hf(weights: dict[str, torch.Tensor], config: XLSTMLargeConfig) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face xLSTM one (either weight mode); unknown names are kept as they are,
    so that the check against the model names them."""
    weights, ours = dict(weights), {}
    qk, v, heads = int(config.qk_factor * config.embedding_dim), config.embedding_dim, config.num_heads

    def take(theirs: str, name: str) -> None:
        if theirs in weights:
            ours[name] = weights.pop(theirs)

    def split(theirs: str, names: tuple[str, ...], sizes: list[int]) -> None:
        if theirs in weights:
            ours.update(zip(names, weights.pop(theirs).split(sizes)))

    for theirs, name in (("backbone.embeddings", "embedding"), ("backbone.out_norm", "final_norm"),
                         ("lm_head", "head")):
        take(f"{theirs}.weight", f"{name}.weight")
    for n in range(config.num_blocks):
        block, theirs = f"blocks.{n}.", f"backbone.blocks.{n}."
        for name, their_name in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                take(f"{theirs}{their_name}.{kind}", f"{block}{name}.{kind}")
        split(f"{theirs}mlstm_layer.qkv_opreact.weight", tuple(f"{block}{p}.weight" for p in "qkvo"), [qk, qk, v, v])
        for kind in ("weight", "bias"):
            split(f"{theirs}mlstm_layer.ifgate_preact.{kind}", (f"{block}igate.{kind}", f"{block}fgate.{kind}"),
                  [heads, heads])
        take(f"{theirs}ffn.proj_up_gate_z.weight", f"{block}ffn.up.weight")
        if f"{theirs}ffn.proj_up_gate.weight" in weights and f"{theirs}ffn.proj_up.weight" in weights:
            ours[f"{block}ffn.up.weight"] = torch.cat([weights.pop(f"{theirs}ffn.proj_up_gate.weight"),
                                                      weights.pop(f"{theirs}ffn.proj_up.weight")])
    return ours | weights


def weights_to_hf(state: dict[str, torch.Tensor], config: XLSTMLargeConfig,
                  weight_mode: str) -> dict[str, torch.Tensor]:
    """A Hugging Face xLSTM state dict from ours (contiguous copies: safetensors stores no views)."""
    hf = {"backbone.embeddings.weight": state["embedding.weight"], "backbone.out_norm.weight": state["final_norm.weight"]}
    if not config.tie_embeddings:
        hf["lm_head.weight"] = state["head.weight"]
    for n in range(config.num_blocks):
        block, theirs = f"blocks.{n}.", f"backbone.blocks.{n}."
        if weight_mode == "fused":
            hf[f"{theirs}mlstm_layer.qkv_opreact.weight"] = torch.cat([state[f"{block}{p}.weight"] for p in "qkvo"])
            for kind in ("weight", "bias"):
                hf[f"{theirs}mlstm_layer.ifgate_preact.{kind}"] = torch.cat(
                    [state[f"{block}igate.{kind}"], state[f"{block}fgate.{kind}"]])
            hf[f"{theirs}ffn.proj_up_gate_z.weight"] = state[f"{block}ffn.up.weight"]
            names = {name: their for name, their in BLOCK_NAMES.items() if name not in FUSED_IN_ONE}
        else:
            up_gate, up = state[f"{block}ffn.up.weight"].chunk(2)
            hf[f"{theirs}ffn.proj_up_gate.weight"], hf[f"{theirs}ffn.proj_up.weight"] = up_gate, up
            names = BLOCK_NAMES
        for name, their_name in names.items():
            for kind in ("weight", "bias"):
                if f"{block}{name}.{kind}" in state:
                    hf[f"{theirs}{their_name}.{kind}"] = state[f"{block}{name}.{kind}"]
    return {name: tensor.contiguous().clone() for name, tensor in hf.items()}


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, or of every shard its index lists.

    Raises:
        FileNotFoundError: no weights, or a shard the index lists is missing.
        ValueError: a file that is not safetensors.
    """
    index = folder / INDEX_FILE
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise FileNotFoundError(f"{folder} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {INDEX_FILE} lists shard(s) that are missing: {', '.join(missing)}")
    weights = {}
    for shard in shards:
        try:
            weights |= load_file(str(folder / shard))
        except SafetensorError as error:
            raise ValueError(f"{folder / shard} is not a readable safetensors file ({error})") from error
    return weights


def read_hf_config(folder: Path) -> XLSTMLargeConfig:
    """Our config for the Hugging Face xLSTM folder `folder` (its config.json).

    Raises:
        FileNotFoundError: no config.json.
        ValueError: another model type or settings our model cannot express (`config_from_hf`).
    """
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder / CONFIG_FILE} not found: give a Hugging Face xLSTM folder")
    return config_from_hf(json.loads((folder / CONFIG_FILE).read_text()))


def import_folder(source: str | Path, destination: str | Path) -> Path:
    """Our export (config.json, model.safetensors, tokenizer.json when the source has one) from a Hugging Face
    xLSTM folder. Everything is checked before anything is written.

    Raises:
        FileNotFoundError, ValueError: a missing file, another model type, unsupported settings, tensors that are
            missing, unexpected or of another shape than config.json says; a destination that is not empty.
    """
    source, destination = Path(source), Path(destination)
    config = read_hf_config(source)
    model = build_model(config)
    weights = weights_from_hf(read_hf_weights(source), config)
    check_state_dict_matches(model, weights, source=str(source))
    check_empty_destination(destination)
    model.load_state_dict(weights, strict=not config.tie_embeddings)
    save_pretrained(model, destination)
    if (source / TOKENIZER_FILE).is_file():
        shutil.copy(source / TOKENIZER_FILE, destination / TOKENIZER_FILE)
    return destination


def export_folder(source: str | Path, destination: str | Path, weight_mode: str = "single") -> Path:
    """A Hugging Face xLSTM folder (config.json, model.safetensors, and the tokenizer as tokenizer.json with its
    tokenizer_config.json) from our xlstm_large export.

    Raises:
        FileNotFoundError, ValueError: not an export, not an xlstm_large model, a setting the Hugging Face model
            cannot express, or a destination that is not empty.
    """
    source, destination = Path(source), Path(destination)
    model = load_pretrained(source)
    if not isinstance(model.config, XLSTMLargeConfig):
        raise ValueError(f"{source} holds a {model.config.architecture!r} model: only xlstm_large (NX-AI's "
                         "xLSTM-7B architecture) has a Hugging Face xLSTM counterpart")
    tokenizer_file = source / TOKENIZER_FILE
    eos = eos_id(load_tokenizer(tokenizer_file)) if tokenizer_file.is_file() else None
    hf_config = config_to_hf(model.config, weight_mode, eos)
    weights = weights_to_hf(model.state_dict(), model.config, weight_mode)
    check_empty_destination(destination)
    destination.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(destination / WEIGHTS_FILE), metadata={"format": "pt"})
    (destination / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_file.is_file():
        shutil.copy(tokenizer_file, destination / TOKENIZER_FILE)
        (destination / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    return destination


def check_empty_destination(destination: Path) -> None:
    """Raise ValueError unless `destination` is new or an empty folder: a conversion never mixes its files into
    another model's."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} already exists and is not an empty folder: choose a new destination "
                         "(nothing was written)")
