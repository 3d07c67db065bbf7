"""Exports written before the paper stack and the 7B-style stack had a config each (tests/assets/legacy_exports:
tiny models with random non-zero weights, saved with their logits by the code of commit 0c87b00) still load,
into the right model, and compute what they computed then."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlstm_lm.models import XLSTMConfig, XLSTMLargeConfig, build_model, model_config
from xlstm_lm.models.io import load_model

LEGACY = Path(__file__).parents[1] / "assets" / "legacy_exports"


@pytest.mark.parametrize("architecture,config_class", [("xlstm", XLSTMConfig), ("xlstm_large", XLSTMLargeConfig)])
def test_an_export_of_the_former_shared_config_loads_and_computes_the_same_logits(architecture, config_class):
    folder = LEGACY / architecture
    saved = json.loads((folder / "config.json").read_text())
    assert "large_qk_factor" in saved and "ratio" in saved  # written by the one config both stacks shared
    model, _ = load_model(folder)
    assert type(model.config) is config_class
    expected = load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(expected["input_ids"]), expected["logits"])


def test_the_former_fields_are_renamed_or_dropped_by_architecture():
    saved = json.loads((LEGACY / "xlstm_large" / "config.json").read_text())
    changed = {**saved, "large_qk_factor": 0.25, "large_ffn_factor": 2.0, "gate_soft_cap": 10.0}
    config = model_config(changed)
    assert (config.qk_factor, config.ffn_factor, config.gate_soft_cap) == (0.25, 2.0, 10.0)
    with pytest.raises(TypeError, match="no_such_field"):  # a field no version ever had is still refused
        model_config({**saved, "no_such_field": 1})
    paper = model_config(json.loads((LEGACY / "xlstm" / "config.json").read_text()))
    assert paper.slstm_positions == [1] and not hasattr(paper, "gate_soft_cap")
    assert build_model(paper).num_parameters() == load_model(LEGACY / "xlstm")[0].num_parameters()
