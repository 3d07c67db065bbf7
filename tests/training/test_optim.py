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


def test_fused_adamw_is_clipped_under_bf16_mixed(monkeypatch):
    """Fused AdamW (what build_optimizer gives on a GPU) says it unscales gradients itself, and Lightning's
    mixed-precision plugin then refuses to clip; with bf16 there is no scaler, so the module clips directly."""
    import lightning as L

    from xlstm_lm.training.module import LanguageModelModule

    class FusedModule(LanguageModelModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)  # fused runs on CPU tensors too

    model = {"architecture": "xlstm", "vocab_size": 64, "embedding_dim": 16, "num_blocks": 2, "num_heads": 2,
             "ratio": "1:1", "backend": "native"}
    module = FusedModule(model, {}, {}, max_steps=2)
    tokens = torch.randint(64, (4, 17), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": row[None, :-1], "labels": row[None, 1:]} for row in tokens]
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, **kw: norms.append((max_norm, clip(params, max_norm, **kw))))
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, gradient_clip_val=1e-4,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 2 and [max_norm for max_norm, _ in norms] == [1e-4, 1e-4]
    assert all(norm > 1e-4 for _, norm in norms)  # the gradients were above the bound, so they were scaled down


def test_adamw_is_fused_only_on_a_gpu():
    model = XLSTMLM(XLSTMConfig(vocab_size=64, embedding_dim=16, num_blocks=2, num_heads=4, ratio="1:1"))
    assert not build_optimizer(model, OptimizerConfig()).defaults["fused"]  # CPU: the default (foreach) path
    if torch.cuda.is_available():
        assert build_optimizer(model.cuda(), OptimizerConfig()).defaults["fused"]
