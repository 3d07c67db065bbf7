"""Activation checkpointing and compile change neither results nor parameter names."""

import pytest
import torch

from xlstm_lm.models import LlamaConfig, LlamaLM, XLSTMConfig, XLSTMLM
from xlstm_lm.training.parallelize import parallelize


@pytest.mark.parametrize("make", [
    lambda: XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=8)),
    lambda: LlamaLM(LlamaConfig(vocab_size=61, embedding_dim=32, num_blocks=4, num_heads=4)),
])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(make):
    torch.manual_seed(0)
    model = make().double()
    ids = torch.randint(0, 61, (2, 20))

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    names = list(model.state_dict())
    parallelize(model, activation_checkpointing=True)
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert checkpointed_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(checkpointed_grads[name], plain_grads[name])
    assert list(model.state_dict()) == names


def test_activation_checkpointing_wraps_every_block_only_while_training(monkeypatch):
    import xlstm_lm.models.base as base

    calls = []
    real_checkpoint = base.checkpoint
    monkeypatch.setattr(base, "checkpoint", lambda *a, **kw: calls.append(1) or real_checkpoint(*a, **kw))
    model = parallelize(XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=3, num_heads=4, ratio="1:0")),
                        activation_checkpointing=True)
    ids = torch.randint(0, 61, (1, 8))
    model(ids).sum().backward()
    assert len(calls) == 3
    with torch.no_grad():
        model(ids)
    model.eval()
    model(ids)
    assert len(calls) == 3  # inference never recomputes


def test_compiled_model_matches_eager_and_keeps_its_names():
    """trainer.compile=true: inductor compiles the whole stack (the sLSTM loop stays one custom operator);
    the loss from labels and every gradient must equal eager mode. About a minute on 2 cores, cold."""
    torch.manual_seed(0)
    model = XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=8))
    ids = torch.randint(0, 61, (2, 19))
    params = list(model.parameters())
    eager = model(ids[:, :-1], labels=ids[:, 1:])
    eager_grads = torch.autograd.grad(eager, params)
    names = list(model.state_dict())
    parallelize(model, compile=True)
    compiled = model(ids[:, :-1], labels=ids[:, 1:])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(torch.autograd.grad(compiled, params), eager_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert list(model.state_dict()) == names
