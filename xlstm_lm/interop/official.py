"""The official `xlstm` package's paper model (`xLSTMLMModel`, NX-AI's xlstm 2.0.6) into our `xlstm` model.

Input: the model's state dict (`torch.save(model.state_dict(), "model.pt")`, or a safetensors file) and its
config, a YAML or JSON file of `xLSTMLMModelConfig` fields, either at the top level or under `model:` as the
official repository's experiment configs write them (nested `mlstm_block: {mlstm: {...}}`,
`slstm_block: {slstm: {...}, feedforward: {...}}`; omitted fields take the package's defaults). The package
itself is not needed. A setting that changes what the model computes and that ours cannot express is refused
by name; settings of training, init or kernel builds (dropout, bias_init, dtype, batch_size, ...) are read and
ignored; an unknown field is refused, so a typo cannot pass unnoticed.

Layouts, ours <- theirs (block N, `xlstm_block_stack.blocks.N.` before their names):
    embedding, head, final_norm   token_embedding, lm_head, xlstm_block_stack.post_blocks_norm
    every norm weight w           1 + w (their LayerNorm stores the offset from one)
    norm                          xlstm_norm
    ffn_norm, ffn.up, ffn.down    ffn_norm, ffn.proj_up, ffn.proj_down (up = [gate; value] in both)
    mLSTM layer.up, .down         xlstm.proj_up, .proj_down       layer.skip  xlstm.learnable_skip
    layer.q, .k, .v (nb, in, out) xlstm.q_proj, .k_proj, .v_proj (nb, out, in)
    layer.conv (C, K), bias       xlstm.conv1d.conv (C, 1, K), bias
    layer.igate, .fgate, .norm    xlstm.mlstm_cell.igate, .fgate, .outnorm
    sLSTM layer.gate_inputs.0-3   xlstm.fgate, .igate, .zgate, .ogate (their `fgate` fills the input-gate slot)
    layer.recurrent (4, NH, DH in, DH out)   xlstm.slstm_cell._recurrent_kernel_: vanilla backend
                                  (NH, 4 DH out, DH in), cuda backend (NH, DH in, 4 DH out)
    layer.bias (4, NH, DH)        xlstm.slstm_cell._bias_: vanilla (4 NH DH) gate-major, cuda (NH 4 DH) head-major
    layer.norm                    xlstm.group_norm
The stored sLSTM kernel and bias follow the backend that saved them, which the config's
`slstm_block.slstm.backend` names (the package's default, "cuda", when absent).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from xlstm_lm.interop.huggingface import check_empty_destination
from xlstm_lm.models import XLSTMConfig, build_model
from xlstm_lm.models.components import round_up
from xlstm_lm.models.io import check_state_dict_matches, save_pretrained

# Per config section: the settings that shape the forward, with the package's defaults (xlstm 2.0.6).
DEFAULTS = {
    "model": {"vocab_size": -1, "embedding_dim": 128, "num_blocks": 1, "slstm_at": [], "tie_weights": False,
              "add_post_blocks_norm": True, "bias": False, "mlstm_block": None, "slstm_block": None},
    "mlstm_block": {"mlstm": {}},
    "slstm_block": {"slstm": {}, "feedforward": {}},
    "mlstm": {"num_heads": 4, "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "proj_factor": 2.0,
              "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64},
    "slstm": {"num_heads": 4, "conv1d_kernel_size": 4, "backend": "cuda", "function": "slstm",
              "group_norm_weight": True, "num_gates": 4},
    "feedforward": {"proj_factor": 1.3, "act_fn": "gelu", "bias": False, "ff_type": "ffn_gated",
                    "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64},
}
# Settings that leave the forward of a model in eval mode as it is (dropout, init, optimizer groups, the CUDA
# kernel's build and precision options), and those the package overwrites from the stack; fields starting with
# "_" are derived by the package and ignored too.
IGNORED = {
    "model": {"context_length", "dropout", "weight_decay_on_embedding", "add_embedding_dropout"},
    "mlstm_block": set(),
    "slstm_block": set(),
    "mlstm": {"embedding_dim", "bias", "dropout", "context_length"},
    "slstm": {"embedding_dim", "hidden_size", "dropout", "num_states", "bias_init", "recurrent_weight_init",
              "gradient_recurrent_cut", "gradient_recurrent_clipval", "forward_clipval", "batch_size",
              "input_shape", "internal_input_shape", "output_shape", "constants", "dtype", "dtype_b", "dtype_r",
              "dtype_w", "dtype_g", "dtype_s", "dtype_a", "enable_automatic_mixed_precision", "initial_val"},
    "feedforward": {"embedding_dim", "dropout"},
}
# The only value these settings can take in our model.
FIXED = {
    "model": {"add_post_blocks_norm": True, "bias": False},
    "slstm": {"function": "slstm", "num_gates": 4, "group_norm_weight": True},
    "feedforward": {"act_fn": "gelu", "bias": False, "ff_type": "ffn_gated"},
}
SLSTM_BACKENDS = ("vanilla", "cuda")
STACK = "xlstm_block_stack."


def _existing_file(path: str | Path, what: str, wanted: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: give {wanted}")
    return path


def read_official_config(path: str | Path) -> dict:
    """The xLSTMLMModelConfig fields of a YAML or JSON file (under `model:` or at the top level).

    Raises:
        FileNotFoundError, ValueError: no such file, or not a mapping of config fields.
    """
    path = _existing_file(path, "config", "the xLSTMLMModelConfig fields as YAML or JSON")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is neither YAML nor JSON ({error})") from error
    if isinstance(config, dict) and isinstance(config.get("model"), dict) and "num_blocks" not in config:
        config = config["model"]  # an experiment config of the official repository
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a mapping of xLSTMLMModelConfig fields")
    return config


def _section(name: str, given: dict | None, unknown: list[str], refused: list[str]) -> dict:
    """The section's settings with the package's defaults filled in; unknown fields and values our model cannot
    express are appended (named) to `unknown` and `refused`."""
    given = given or {}
    if not isinstance(given, dict):
        unknown.append(f"{name} (a mapping of fields, got {given!r})")
        return dict(DEFAULTS[name])
    unknown += [f"{name}.{key}" for key in given
                if key not in DEFAULTS[name] and key not in IGNORED[name] and not str(key).startswith("_")]
    settings = {**DEFAULTS[name], **{key: value for key, value in given.items() if key in DEFAULTS[name]}}
    refused += [f"{name}.{key}={settings[key]!r} (we support {value!r})"
                for key, value in FIXED.get(name, {}).items() if settings[key] != value]
    return settings


def _width(section: dict, dim: int) -> int:
    """The package's up-projection width: proj_factor * D rounded up (or down) to a multiple."""
    multiple = section["round_proj_up_to_multiple_of"]
    rounding = math.ceil if section["round_proj_up_dim_up"] else math.floor
    return rounding(section["proj_factor"] * dim / multiple) * multiple


def _our_factor(section: dict, name: str, dim: int, refused: list[str]) -> float:
    """A factor whose width, rounded up to 64 as ours are, is the package's width for this section."""
    width = _width(section, dim)
    for factor in (section["proj_factor"], width / dim):
        if round_up(factor * dim, 64) == width:
            return factor
    refused.append(f"{name} width {width} (proj_factor={section['proj_factor']!r}, round_proj_up_dim_up="
                   f"{section['round_proj_up_dim_up']!r}, round_proj_up_to_multiple_of="
                   f"{section['round_proj_up_to_multiple_of']!r}): ours are multiples of 64")
    return section["proj_factor"]


def config_from_official(official: dict) -> tuple[XLSTMConfig, str]:
    """Our config for the fields of an official xLSTMLMModelConfig, and the sLSTM backend whose layout the
    weights are stored in.

    Raises:
        ValueError: unknown fields, or settings our model cannot express (each named).
    """
    unknown, refused, unused = [], [], []  # what unused block types say is checked for typos only
    model = _section("model", official, unknown, refused)
    dim, num_blocks = model["embedding_dim"], model["num_blocks"]
    has_mlstm, has_slstm = model["mlstm_block"] is not None, model["slstm_block"] is not None
    slstm_at = list(range(num_blocks)) if not has_mlstm or model["slstm_at"] == "all" else list(model["slstm_at"])
    uses_mlstm, uses_slstm = len(slstm_at) < num_blocks, bool(slstm_at)
    mlstm_refused, slstm_refused = refused if uses_mlstm else unused, refused if uses_slstm else unused
    mlstm = _section("mlstm", _section("mlstm_block", model["mlstm_block"], unknown, mlstm_refused)["mlstm"],
                     unknown, mlstm_refused)
    slstm_block = _section("slstm_block", model["slstm_block"], unknown, slstm_refused)
    slstm = _section("slstm", slstm_block["slstm"], unknown, slstm_refused)
    ffn = _section("feedforward", slstm_block["feedforward"], unknown, slstm_refused)
    if unknown:
        raise ValueError(f"unknown xLSTMLMModelConfig field(s) {', '.join(unknown)}: not a setting of xlstm 2.0.6's "
                         "xLSTMLMModel (check the spelling)")
    if uses_slstm and not has_slstm:
        raise ValueError(f"the config places sLSTM blocks at {slstm_at} but has no slstm_block")
    if uses_slstm and slstm_block["feedforward"] is None:
        refused.append("slstm_block.feedforward=None (our sLSTM block has its FFN)")
    if uses_slstm and slstm["backend"] not in SLSTM_BACKENDS:
        refused.append(f"slstm.backend={slstm['backend']!r} (the weights' layout is that of "
                       f"{' or '.join(SLSTM_BACKENDS)})")
    used = ([mlstm] if uses_mlstm else []) + ([slstm] if uses_slstm else [])
    for key in ("num_heads", "conv1d_kernel_size"):
        if len({section[key] for section in used}) > 1:
            refused.append(f"mlstm.{key}={mlstm[key]!r} and slstm.{key}={slstm[key]!r} (ours share one value)")
    if any(section["conv1d_kernel_size"] < 1 for section in used):
        refused.append("conv1d_kernel_size=0 (our blocks always have their causal convolution)")
    proj_factor = _our_factor(mlstm, "mlstm", dim, refused) if uses_mlstm else mlstm["proj_factor"]
    ffn_factor = _our_factor(ffn, "feedforward", dim, refused) if uses_slstm else ffn["proj_factor"]
    if refused:
        raise ValueError(f"the model's settings {', '.join(refused)} have no counterpart in our xlstm model; it "
                         "cannot be imported without changing what it computes")
    if model["vocab_size"] is None or model["vocab_size"] <= 0:
        raise ValueError("the config lacks vocab_size")
    heads = used[0] if used else mlstm
    config = XLSTMConfig(vocab_size=model["vocab_size"], embedding_dim=dim, num_blocks=num_blocks,
                         num_heads=heads["num_heads"], tie_embeddings=model["tie_weights"],
                         ratio=f"{num_blocks - len(slstm_at)}:{len(slstm_at)}", slstm_at=slstm_at,
                         proj_factor=proj_factor, conv_kernel=heads["conv1d_kernel_size"],
                         qkv_block_size=mlstm["qkv_proj_blocksize"], slstm_ffn_factor=ffn_factor)
    return config, slstm["backend"]


def _to_ours(kind: str, t: torch.Tensor, backend: str, NH: int, DH: int) -> torch.Tensor:
    """One of their tensors in our layout (`kind` from `tensor_map`)."""
    if kind == "norm":
        return 1.0 + t  # their weight_proxy, the same sum in the same dtype
    if kind == "blocks":  # (nb, out, in) -> (nb, in, out)
        return t.transpose(1, 2)
    if kind == "conv":  # (C, 1, K) -> (C, K)
        return t[:, 0]
    if kind == "recurrent":  # -> (4, NH, DH in, DH out)
        if backend == "vanilla":
            return t.view(NH, 4, DH, DH).permute(1, 0, 3, 2)  # from (NH, 4 DH out, DH in)
        return t.view(NH, DH, 4, DH).permute(2, 0, 1, 3)  # from (NH, DH in, 4 DH out)
    if kind == "bias":  # -> (4, NH, DH)
        return t.view(4, NH, DH) if backend == "vanilla" else t.view(NH, 4, DH).transpose(0, 1)
    return t


def _their_shape(kind: str, shape: tuple, backend: str, NH: int, DH: int) -> tuple:
    """The shape of their tensor whose counterpart has our `shape`."""
    if kind == "blocks":
        return shape[0], shape[2], shape[1]
    if kind == "conv":
        return shape[0], 1, shape[1]
    if kind == "recurrent":
        return (NH, 4 * DH, DH) if backend == "vanilla" else (NH, DH, 4 * DH)
    if kind == "bias":
        return (4 * NH * DH,)
    return shape


def tensor_map(config: XLSTMConfig) -> dict[str, tuple[str, str]]:
    """Their name -> (our name, conversion) for every tensor of the model."""
    names = {"token_embedding.weight": ("embedding.weight", "same"),
             f"{STACK}post_blocks_norm.weight": ("final_norm.weight", "norm")}
    if not config.tie_embeddings:
        names["lm_head.weight"] = ("head.weight", "same")
    slstm_at = set(config.slstm_positions)
    for n in range(config.num_blocks):
        theirs, ours = f"{STACK}blocks.{n}.", f"blocks.{n}."
        block = {"xlstm_norm.weight": ("norm.weight", "norm"),
                 "xlstm.conv1d.conv.weight": ("layer.conv.weight", "conv"),
                 "xlstm.conv1d.conv.bias": ("layer.conv.bias", "same")}
        if n in slstm_at:
            block |= {f"xlstm.{gate}gate.weight": (f"layer.gate_inputs.{slot}.weight", "blocks")
                      for slot, gate in enumerate("fizo")}  # their fgate feeds the input-gate slot
            block |= {"xlstm.slstm_cell._recurrent_kernel_": ("layer.recurrent", "recurrent"),
                      "xlstm.slstm_cell._bias_": ("layer.bias", "bias"),
                      "xlstm.group_norm.weight": ("layer.norm.weight", "norm"),
                      "ffn_norm.weight": ("ffn_norm.weight", "norm"), "ffn.proj_up.weight": ("ffn.up.weight", "same"),
                      "ffn.proj_down.weight": ("ffn.down.weight", "same")}
        else:
            block |= {f"xlstm.{p}_proj.weight": (f"layer.{p}.weight", "blocks") for p in "qkv"}
            block |= {f"xlstm.mlstm_cell.{gate}.{kind}": (f"layer.{gate}.{kind}", "same")
                      for gate in ("igate", "fgate") for kind in ("weight", "bias")}
            block |= {"xlstm.mlstm_cell.outnorm.weight": ("layer.norm.weight", "norm"),
                      "xlstm.learnable_skip": ("layer.skip", "same"),
                      "xlstm.proj_up.weight": ("layer.up.weight", "same"),
                      "xlstm.proj_down.weight": ("layer.down.weight", "same")}
        names |= {theirs + their: (ours + our, kind) for their, (our, kind) in block.items()}
    return names


def weights_from_official(weights: dict[str, torch.Tensor], model: torch.nn.Module, backend: str,
                          source: str) -> dict[str, torch.Tensor]:
    """Our state dict from the official one, after checking that every tensor is there with the shape the config
    gives it and nothing else is (named in their terms).

    Raises:
        ValueError: missing, unexpected or mis-shaped tensors.
    """
    config = model.config
    layout = (backend, config.num_heads, config.embedding_dim // config.num_heads)
    names, shapes = tensor_map(config), {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = {theirs: _their_shape(kind, shapes[ours], *layout) for theirs, (ours, kind) in names.items()}
    weights = dict(weights)
    if config.tie_embeddings and "lm_head.weight" in weights:
        expected["lm_head.weight"] = expected["token_embedding.weight"]  # the shared matrix, saved under both names
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(f"{name}: file {tuple(weights[name].shape)} vs config {expected[name]}"
                        for name in set(weights) & set(expected) if tuple(weights[name].shape) != expected[name])
    if missing or unexpected or mis_shaped:
        problems = [f"{label}: {items[:5]}{' ...' if len(items) > 5 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected),
                                         ("shape mismatch", mis_shaped)) if items]
        raise ValueError(f"weights in {source} do not match the official config ({'; '.join(problems)}); give the "
                         "state dict of the xLSTMLMModel the config describes")
    return {ours: _to_ours(kind, weights[theirs], *layout) for theirs, (ours, kind) in names.items()}


def read_official_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch.save file (read with weights_only=True).

    Raises:
        FileNotFoundError, ValueError: no such file, or not a state dict of tensors.
    """
    path = _existing_file(path, "weights", "the xLSTMLMModel's state dict (.pt or .safetensors)")
    try:
        weights = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable state dict ({type(error).__name__}: {error})") from error
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors): save "
                         "model.state_dict() of the xLSTMLMModel")
    return weights


def import_official(config_file: str | Path, weights_file: str | Path, destination: str | Path) -> Path:
    """Our export (config.json, model.safetensors) from an official xLSTMLMModel's config and state dict. Everything
    is checked before anything is written.

    Raises:
        FileNotFoundError, ValueError: a missing file, unknown or unsupported settings, tensors that are missing,
            unexpected or of another shape than the config says; a destination that is not empty.
    """
    config, backend = config_from_official(read_official_config(config_file))
    model = build_model(config)
    weights = weights_from_official(read_official_weights(weights_file), model, backend, str(weights_file))
    check_state_dict_matches(model, weights, source=str(weights_file))
    destination = Path(destination)
    check_empty_destination(destination)
    model.load_state_dict(weights, strict=not config.tie_embeddings)
    return save_pretrained(model, destination)
