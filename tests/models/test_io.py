"""Plain export: safetensors + config.json round trip, mismatches named, state_dict keys pinned."""

import json

import pytest
import torch

from xlstm_lm.models import XLSTMLM, XLSTMConfig
from xlstm_lm.models.io import load_pretrained, save_pretrained

CONFIG = dict(vocab_size=64, embedding_dim=16, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=4)


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tie):
    torch.manual_seed(0)
    model = XLSTMLM(XLSTMConfig(**CONFIG, tie_embeddings=tie))
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 9))
    assert torch.equal(model(ids), loaded(ids))
    assert (loaded.head.weight is loaded.embedding.weight) == tie


def test_mismatched_config_is_one_clear_error(tmp_path):
    save_pretrained(XLSTMLM(XLSTMConfig(**CONFIG)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embedding_dim"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match the model config.*shape mismatch"):
        load_pretrained(tmp_path)


def test_a_truncated_or_damaged_weights_file_is_one_clear_error(tmp_path):
    save_pretrained(XLSTMLM(XLSTMConfig(**CONFIG)), tmp_path)
    weights = tmp_path / "model.safetensors"
    whole = weights.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"\xff" * 64 + whole[64:]):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match="model.safetensors is not a readable weights file"):
            load_pretrained(tmp_path)


def test_missing_export_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_state_dict_keys_are_stable():
    """Checkpoints depend on these names: change them only with a conversion for old checkpoints."""
    keys = list(XLSTMLM(XLSTMConfig(**CONFIG)).state_dict())
    assert keys == [
        "embedding.weight", "head.weight",
        "blocks.0.norm.weight",
        "blocks.0.layer.skip", "blocks.0.layer.up.weight",
        "blocks.0.layer.conv.weight", "blocks.0.layer.conv.bias",
        "blocks.0.layer.q.weight", "blocks.0.layer.k.weight", "blocks.0.layer.v.weight",
        "blocks.0.layer.igate.weight", "blocks.0.layer.igate.bias",
        "blocks.0.layer.fgate.weight", "blocks.0.layer.fgate.bias",
        "blocks.0.layer.norm.weight", "blocks.0.layer.down.weight",
        "blocks.1.norm.weight",
        "blocks.1.layer.recurrent", "blocks.1.layer.bias",
        "blocks.1.layer.conv.weight", "blocks.1.layer.conv.bias",
        "blocks.1.layer.gate_inputs.0.weight", "blocks.1.layer.gate_inputs.1.weight",
        "blocks.1.layer.gate_inputs.2.weight", "blocks.1.layer.gate_inputs.3.weight",
        "blocks.1.layer.norm.weight",
        "blocks.1.ffn_norm.weight", "blocks.1.ffn.up.weight", "blocks.1.ffn.down.weight",
        "final_norm.weight",
    ]
