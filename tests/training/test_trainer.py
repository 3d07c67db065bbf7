"""Trainer presets build what they promise: the FSDP strategy wraps every block, multinode follows SLURM,
SLURM gets checkpoint-and-requeue, the data module (not Lightning) shards the batches."""

import signal

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf
from torch.distributed.fsdp import ShardingStrategy

from tests.conftest import compose_train
from xlstm_lm.models.llama import TransformerLayer
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.models.xlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMBlock
from xlstm_lm.training.checkpointing import AtomicCheckpointIO
from xlstm_lm.training.trainer import LoggerConfig, build_logger, build_plugins, build_strategy, build_trainer
from xlstm_lm.training.callbacks import TokenThroughput


def trainer_config(*overrides):
    return OmegaConf.to_object(compose_train(list(overrides))).trainer


@pytest.mark.parametrize("sharding,expected", [("full", ShardingStrategy.FULL_SHARD),
                                               ("hybrid", ShardingStrategy.HYBRID_SHARD)])
def test_fsdp_preset_builds_a_block_wrapped_bf16_strategy(sharding, expected):
    config = trainer_config("trainer=fsdp", f"trainer.fsdp.sharding={sharding}")
    assert (config.accelerator, config.strategy, config.precision) == ("gpu", "fsdp", "bf16-mixed")
    strategy = build_strategy(config)
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy == expected
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {MLSTMBlock, SLSTMBlock, LargeMLSTMBlock, TransformerLayer}
    assert strategy.kwargs["use_orig_params"]
    precision = strategy.mixed_precision
    assert str(precision.param_dtype) == "torch.bfloat16" and str(precision.reduce_dtype) == "torch.float32"


def test_bad_fsdp_sharding_fails_at_compose_with_the_options():
    with pytest.raises(ValueError, match=r"trainer.fsdp.sharding must be one of \['full', 'grad_op', 'hybrid'\]"):
        trainer_config("trainer=fsdp", "trainer.fsdp.sharding=zero3")


def test_multinode_preset_reads_nodes_and_devices_from_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    config = trainer_config("trainer=multinode")
    assert (config.num_nodes, config.devices, config.strategy) == (1, "auto", "ddp")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    config = trainer_config("trainer=multinode")
    assert (config.num_nodes, config.devices) == (4, 8)
    assert trainer_config("trainer=multinode", "trainer.num_nodes=2").num_nodes == 2


def test_slurm_gets_checkpoint_and_requeue_on_the_configured_signal(monkeypatch):
    assert [type(p) for p in build_plugins(trainer_config())] == [AtomicCheckpointIO]
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    (_, slurm) = build_plugins(trainer_config("trainer.slurm_requeue_signal=SIGUSR2"))
    assert isinstance(slurm, SLURMEnvironment) and slurm.auto_requeue and slurm.requeue_signal == signal.SIGUSR2
    assert not build_plugins(trainer_config("trainer.slurm_requeue_signal=null"))[1].auto_requeue
    with pytest.raises(ValueError, match="not a signal name"):
        trainer_config("trainer.slurm_requeue_signal=USR1")


def test_lightning_adds_no_distributed_sampler(tmp_path):
    trainer = build_trainer(trainer_config(), OmegaConf.to_object(compose_train()).logger, tmp_path, TokenThroughput())
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_online_wandb_without_credentials_fails_with_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ValueError, match="wandb login.*logger.mode=offline"):
        build_logger(LoggerConfig(kind="wandb"), tmp_path)


def test_a_restart_moves_the_earlier_metrics_aside(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text("first")
    build_logger(LoggerConfig(kind="csv"), tmp_path)
    (logs / "metrics.csv").write_text("second")
    build_logger(LoggerConfig(kind="csv"), tmp_path)
    assert (logs / "metrics-1.csv").read_text() == "first" and (logs / "metrics-2.csv").read_text() == "second"
    assert not (logs / "metrics.csv").exists()
