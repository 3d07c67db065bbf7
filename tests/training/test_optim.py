"""Weight decay groups and the learning-rate schedule."""

import math

import pytest
import torch

from xlstm_lm.models import XLSTMLM, XLSTMConfig
from xlstm_lm.training.optim import OptimizerConfig, build_optimizer, lr_factor, parameter_groups


def test_weight_decay_only_on_weight_matrices():
    model = XLSTMLM(XLSTMConfig(vocab_size=64, embedding_dim=16, num_blocks=2, num_heads=4, ratio="1:1"))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(not_decayed) and len(decayed | not_decayed) == len(names)
    assert "embedding.weight" in not_decayed and "head.weight" in decayed
    assert {"blocks.0.layer.up.weight", "blocks.0.layer.q.weight", "blocks.1.layer.recurrent"} <= decayed
    assert "blocks.1.layer.bias" in not_decayed  # the sLSTM gate biases, although 3-dimensional
    assert all(n.endswith(("norm.weight", "bias", "skip")) for n in not_decayed - {"embedding.weight"})
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    factors = [lr_factor(step, 10, 110, 0.1) for step in range(120)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[110] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_bad_optimizer_config():
    with pytest.raises(ValueError, match="lr"):
        OptimizerConfig(lr=0)
