"""Cluster configs compose: launchers, sweeps and the paper's experiment recipes."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose_train
from xlstm_lm.cli.schemas import register_configs


def compose_with_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


PAPER_LR = {"125m": 3e-3, "350m": 1.5e-3, "760m": 1.25e-3, "1.3b": 1e-3}


@pytest.mark.parametrize("size", sorted(PAPER_LR))
def test_paper_experiments_compose_with_the_recipe(size):
    config = OmegaConf.to_object(compose_train([f"+experiment=paper_{size}_15b", "trainer.devices=8"]))
    assert config.data.seq_len == 2048 and config.model.ratio == "7:1"
    assert config.data.batch_size * 8 * config.trainer.accumulate_grad_batches == 256
    assert config.optimizer.lr == PAPER_LR[size]
    assert (config.optimizer.beta1, config.optimizer.beta2, config.optimizer.eps) == (0.9, 0.95, 1e-5)
    assert config.optimizer.weight_decay == 0.1 and config.trainer.gradient_clip_val == 1.0
    assert (config.scheduler.warmup_steps, config.scheduler.min_lr_ratio) == (750, 0.1)
    assert config.trainer.max_steps * 256 * 2048 == pytest.approx(15e9, rel=1e-4)


def test_large_experiment_composes_with_the_7b_recipe():
    config = OmegaConf.to_object(compose_train(["+experiment=large_7b"]))
    assert config.model.architecture == "xlstm_large" and config.model.embedding_dim == 4096
    assert (config.data.seq_len, config.optimizer.lr, config.scheduler.warmup_steps) == (8192, 4e-4, 3000)
    assert config.trainer.gradient_clip_val == 0.5 and config.trainer.strategy == "fsdp"


def test_every_experiment_is_tested():
    assert options("experiment") == sorted([f"paper_{size}_15b" for size in PAPER_LR] + ["large_7b"])


def test_slurm_launcher_takes_partition_nodes_gpus_time_account_and_signals_lightning():
    config = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                                 "hydra.launcher.account=proj", "hydra.launcher.timeout_min=60"])
    launcher = config.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.nodes, launcher.account, launcher.timeout_min) == ("gpu", 2, "proj", 60)
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8  # one task (rank) per GPU
    assert launcher.additional_parameters.signal.startswith("USR1@")
    assert OmegaConf.to_object(compose_train(["hydra/launcher=slurm"])).trainer.slurm_requeue_signal == "SIGUSR1"


def test_local_launcher_composes():
    assert compose_with_hydra(["hydra/launcher=local"]).hydra.launcher._target_.endswith("LocalLauncher")


@pytest.mark.parametrize("sweep,params", [
    ("lr_size", {"size": "tiny,125m,350m", "optimizer.lr": "5.0e-4,1.0e-3,2.0e-3,4.0e-3"}),
    ("ratio", {"model": "xlstm_7_1,xlstm_1_0,xlstm_0_1,xlstm_1_1"}),
    ("lr", {"optimizer.lr": "1.0e-3,2.0e-3,4.0e-3"}),
])
def test_grid_sweeps_list_existing_options(sweep, params):
    config = compose_with_hydra([f"+sweep={sweep}"])
    assert dict(config.hydra.sweeper.params) == params
    for group in ("size", "model"):
        if group in params:
            assert set(params[group].split(",")) <= set(options(group))


def test_optuna_sweep_searches_the_learning_rate():
    sweeper = compose_with_hydra(["+sweep=optuna_lr"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.params["optimizer.lr"] == "tag(log, interval(1.0e-4, 1.0e-2))"
