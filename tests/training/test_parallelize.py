"""`parallelize`: activation checkpointing and compile change neither results nor state-dict keys, FSDP2 shards
every block with the options of `trainer.fsdp`, and checkpoints of a run with or without activation
checkpointing load into the other."""

import math

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Replicate, Shard

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli.train import train
from xlstm_lm.models import LlamaConfig, LlamaLM, XLSTMConfig, XLSTMLM
from xlstm_lm.models.io import load_model
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.training.module import LanguageModelModule
from xlstm_lm.training.parallelize import BLOCK_CLASSES, FSDPConfig, parallelize
from xlstm_lm.training.trainer import TrainerConfig

TINY = {"architecture": "xlstm", "vocab_size": 61, "embedding_dim": 32, "num_blocks": 2, "num_heads": 4,
        "ratio": "1:1", "chunk_size": 8}


def blocks_of(model) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, BLOCK_CLASSES)]


@pytest.mark.parametrize("make", [
    lambda: XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=8)),
    lambda: LlamaLM(LlamaConfig(vocab_size=61, embedding_dim=32, num_blocks=4, num_heads=4)),
])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(make):
    torch.manual_seed(0)
    model = make().double()
    ids = torch.randint(0, 61, (2, 20))
    params = list(model.parameters())

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in params]

    plain_loss, plain_grads = loss_and_grads()
    names = list(model.state_dict())
    parallelize(model, TrainerConfig(activation_checkpointing=True))
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert [g is None for g in checkpointed_grads] == [g is None for g in plain_grads]
    for checkpointed, plain in zip(checkpointed_grads, plain_grads):
        if plain is not None:
            torch.testing.assert_close(checkpointed, plain)
    assert list(model.state_dict()) == names


def test_activation_checkpointing_recomputes_every_block_only_in_a_backward(monkeypatch):
    calls = []
    forward = MLSTMBlock.forward
    monkeypatch.setattr(MLSTMBlock, "forward", lambda *args: calls.append(1) or forward(*args))
    model = parallelize(XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=3, num_heads=4, ratio="1:0")),
                        TrainerConfig(activation_checkpointing=True))
    ids = torch.randint(0, 61, (1, 8))
    model(ids).sum().backward()
    assert len(calls) == 6  # three blocks, each run again in the backward
    with torch.no_grad():
        model(ids)
    model.eval()
    with torch.inference_mode():
        model(ids)
    assert len(calls) == 12  # inference never recomputes


def test_checkpointed_model_writes_and_reads_the_plain_state_dict_keys():
    """Checkpoints and exports of runs with and without activation checkpointing have the same keys (PyTorch's
    checkpoint_wrapper would have inserted its own name) and load into each other."""
    plain = LanguageModelModule(TINY, {}, {}, max_steps=2)
    checkpointed = LanguageModelModule(TINY, {}, {}, max_steps=2)
    parallelize(checkpointed.model, TrainerConfig(activation_checkpointing=True))
    assert [name for name, _ in checkpointed.named_parameters()] == [name for name, _ in plain.named_parameters()]
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    checkpointed.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(checkpointed.model(ids), plain.model(ids), rtol=0, atol=0)
    with torch.no_grad():
        for param in checkpointed.parameters():
            param.add_(0.01)
    plain.load_state_dict(checkpointed.state_dict())
    torch.testing.assert_close(plain.model(ids), checkpointed.model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_compiled_model_matches_eager_and_keeps_its_names(activation_checkpointing):
    """trainer.compile=true: inductor compiles the whole stack (the sLSTM loop stays one custom operator);
    the loss from labels and every gradient must equal eager mode, also when the blocks are recomputed in the
    backward. About a minute on 2 cores, cold."""
    torch.manual_seed(0)
    model = XLSTMLM(XLSTMConfig(vocab_size=61, embedding_dim=32, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=8))
    ids = torch.randint(0, 61, (2, 19))
    params = list(model.parameters())
    eager = model(ids[:, :-1], labels=ids[:, 1:])
    eager_grads = torch.autograd.grad(eager, params)
    names = list(model.state_dict())
    parallelize(model, TrainerConfig(compile=True, activation_checkpointing=activation_checkpointing))
    compiled = model(ids[:, :-1], labels=ids[:, 1:])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(torch.autograd.grad(compiled, params), eager_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert list(model.state_dict()) == names


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of this one process (the FSDP mesh needs one); two ranks: tests/integration."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("sharding", ["full", "hybrid", "grad_op"])
def test_fsdp_shards_every_checkpointed_block_and_the_root(one_process_group, sharding):
    config = TrainerConfig(strategy="fsdp", fsdp=FSDPConfig(sharding=sharding), activation_checkpointing=True)
    torch.manual_seed(0)
    model = XLSTMLM(XLSTMConfig(**{k: v for k, v in TINY.items() if k != "architecture"}))
    names, ids = list(model.state_dict()), torch.randint(0, 61, (2, 12))
    expected = model(ids[:, :-1], labels=ids[:, 1:])
    parallelize(model, config, torch.device("cpu"))
    assert isinstance(model, FSDPModule) and all(isinstance(block, FSDPModule) for block in blocks_of(model))
    placements = {p.placements for p in model.parameters()}
    assert placements == ({(Replicate(), Shard(0))} if sharding == "hybrid" else {(Shard(0),)})
    loss = model(ids[:, :-1], labels=ids[:, 1:])
    torch.testing.assert_close(loss, expected)
    # grad_op (ZeRO-2) keeps each block's parameters gathered from the forward to the backward
    kept = not isinstance(blocks_of(model)[0].layer.up.weight, DTensor)
    assert kept == (sharding == "grad_op")
    loss.backward()
    assert list(model.state_dict()) == names


def test_fsdp_under_bf16_mixed_computes_with_bf16_weights_and_keeps_float32_shards(one_process_group):
    config = TrainerConfig(strategy="fsdp", precision="bf16-mixed")
    model = parallelize(XLSTMLM(XLSTMConfig(**{k: v for k, v in TINY.items() if k != "architecture"})), config,
                        torch.device("cpu"))
    seen = []
    block = blocks_of(model)[0]
    block.layer.register_forward_hook(lambda *_: seen.append(block.layer.up.weight.dtype))  # inside the block
    model(torch.randint(0, 61, (1, 8))).sum().backward()
    assert seen == [torch.bfloat16]
    assert {(p.dtype, p.grad.dtype) for p in model.parameters()} == {(torch.float32, torch.float32)}


def test_a_run_with_activation_checkpointing_resumes_a_run_without_and_exports_the_same_keys(tmp_path, data_cache):
    first = tmp_path / "first"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), first)
    second = tmp_path / "second"
    overrides = [*small_run_overrides(data_cache, max_steps=3), "trainer.activation_checkpointing=true",
                 f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"]
    metrics = train(compose_train(overrides), second)  # 3 steps: validates once more after the fit
    assert math.isfinite(metrics["val/loss"])
    written = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for run in (first, second)]
    assert list(written[1]) == list(written[0])
    assert list(load_model(second / "export")[0].state_dict()) == list(load_model(first / "export")[0].state_dict())
