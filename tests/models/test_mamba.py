"""The Mamba baseline: parameter parity with xLSTM[7:1] at every size preset, the Mamba paper's SSM init, carried
states, exact document isolation, and an export round trip."""

from pathlib import Path

import pytest
import torch
import yaml

from tests.evaluation.tiny_export import tiny_model
from xlstm_lm.models import MambaConfig, MambaLM, build_model
from xlstm_lm.models.io import load_pretrained, save_pretrained
from xlstm_lm.training.optim import decayed_parameter_names

SIZE_DIR = Path(__file__).parents[2] / "configs" / "size"


def test_every_size_preset_lands_within_ten_percent_of_xlstm_7_1():
    for preset in sorted(SIZE_DIR.glob("*.yaml")):
        size = yaml.safe_load(preset.read_text())
        # the synthetic tasks' preset leaves the vocabulary to the task (a few dozen tokens)
        common = dict(size["model"], vocab_size=size.get("tokenizer", {}).get("vocab_size", 64))
        with torch.device("meta"):
            xlstm = build_model({"architecture": "xlstm", "ratio": "7:1", **common})
            mamba = build_model({"architecture": "mamba", **common})
        ratio = mamba.num_parameters() / xlstm.num_parameters()
        assert abs(ratio - 1) < 0.10, (preset.stem, ratio)
        assert len(mamba.layers) == common["num_blocks"]


def test_ssm_init_follows_the_mamba_paper():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(vocab_size=64, embedding_dim=32, num_blocks=2, dt_min=1e-3, dt_max=1e-1))
    mixer = model.layers[1].mixer
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 17.0).expand(64, 16))
    torch.testing.assert_close(mixer.D, torch.ones(64))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)  # Δ of a zero input
    assert 1e-3 <= dt.min() < dt.max() <= 1e-1 and mixer.rank == 2
    assert mixer.x_proj.out_features == 2 + 2 * 16 and mixer.in_proj.out_features == 2 * 64
    decayed = decayed_parameter_names(model)  # A_log holds decay rates, not a map: no weight decay
    assert "layers.1.mixer.A_log" not in decayed and "layers.1.mixer.x_proj.weight" in decayed


def double_model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(vocab_size=61, embedding_dim=16, num_blocks=2, chunk_size=8)).double()


def test_state_is_the_conv_window_and_ssm_state_of_each_layer():
    """(Pieces and token steps equal one pass: tests/models/test_baselines.py.)"""
    model, ids = double_model(), torch.randint(0, 61, (2, 5))
    logits, state = model(ids, return_state=True)
    conv_state, ssm_state = state[0]  # per layer: (conv window (B, K-1, E), SSM state (B, E, N))
    assert len(state) == 2 and conv_state.shape == (2, 3, 32) and ssm_state.shape == (2, 32, 16)
    step_logits, _ = model.decode_step(ids[:, :1], state)
    torch.testing.assert_close(step_logits, model(torch.cat([ids, ids[:, :1]], 1))[:, -1:])
    with pytest.raises(ValueError, match="state has 1 entries"):
        model(ids, state=state[:1])


def test_packed_documents_equal_the_documents_alone():
    model, ids = double_model(), torch.randint(0, 61, (1, 30))
    starts = torch.zeros(1, 30, dtype=torch.bool)
    starts[0, [0, 7, 8, 19]] = True  # a one-token document at 7
    assert model.supports_doc_starts
    packed = model(ids, doc_starts=starts)
    for begin, end in ((0, 7), (7, 8), (8, 19), (19, 30)):
        torch.testing.assert_close(packed[:, begin:end], model(ids[:, begin:end]), rtol=1e-12, atol=1e-12)
    # a piece after a carried state restarts at its document start too
    _, state = model(ids[:, :12], return_state=True)
    later, _ = model(ids[:, 12:], state=state, doc_starts=starts[:, 12:], return_state=True)
    torch.testing.assert_close(later[:, 7:], model(ids[:, 19:]), rtol=1e-12, atol=1e-12)


def test_export_round_trip(tmp_path):
    model = tiny_model("mamba")
    loaded = load_pretrained(save_pretrained(model, tmp_path))
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
