"""Trainer presets build what they promise: the FSDP preset gives FSDP2 through Lightning's
ModelParallelStrategy, multinode follows SLURM, SLURM gets checkpoint-and-requeue, the data module (not
Lightning) shards the batches."""

import signal

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import OmegaConf

from tests.conftest import compose_train
from xlstm_lm.training.checkpointing import AtomicCheckpointIO
from xlstm_lm.training.parallelize import build_strategy
from xlstm_lm.training.trainer import LoggerConfig, build_logger, build_plugins, build_trainer


def trainer_config(*overrides):
    return OmegaConf.to_object(compose_train(list(overrides))).trainer


@pytest.mark.parametrize("state_dict_type", ["full", "sharded"])
def test_fsdp_preset_builds_model_parallel_bf16_and_saves_as_asked(state_dict_type):
    """The blocks are sharded by `parallelize` (tests/training/test_parallelize.py), on 2 ranks in
    tests/integration/test_fsdp2.py."""
    config = trainer_config("trainer=fsdp", f"trainer.fsdp.state_dict_type={state_dict_type}")
    assert (config.accelerator, config.strategy, config.precision) == ("gpu", "fsdp", "bf16-mixed")
    strategy = build_strategy(config)
    assert isinstance(strategy, ModelParallelStrategy)
    assert strategy._save_distributed_checkpoint == (state_dict_type == "sharded")
    assert build_strategy(trainer_config("trainer=ddp")) == "ddp"


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
    trainer = build_trainer(trainer_config(), OmegaConf.to_object(compose_train()).logger, tmp_path)
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
