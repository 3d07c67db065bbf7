"""Every config group composes onto the schema; typos and impossible combinations fail before any work."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose_train
from xlstm_lm.cli.schemas import to_config
from xlstm_lm.models import build_model


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_defaults_are_the_cpu_friendly_run():
    config = OmegaConf.to_object(compose_train())
    assert config.model.architecture == "xlstm" and config.model.ratio == "7:1"
    assert config.model.embedding_dim == 256 and config.tokenizer.vocab_size == 8192
    assert config.trainer.accelerator == "cpu" and config.logger.kind == "csv"
    assert config.data.root is None  # the embedded default corpus


@pytest.mark.parametrize("group", ["model", "size", "data", "tokenizer", "optimizer", "scheduler", "trainer", "logger"])
def test_every_group_option_composes_and_validates(group):
    assert options(group), f"configs/{group} is empty"
    for option in options(group):
        to_config(compose_train([f"{group}={option}"]))


def test_every_experiment_composes_with_no_unknown_key():
    assert options("experiment")
    for option in options("experiment"):
        to_config(compose_train([f"+experiment={option}"]))


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("size", options("size"))
def test_every_model_and_size_builds(model, size):
    import torch

    config = OmegaConf.to_object(compose_train([f"model={model}", f"size={size}", "model.vocab_size=50304"]))
    with torch.device("meta"):  # no memory: only the structure is built
        build_model(config.model)


def test_misspelt_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="model.embeding_dim"):
        compose_train(["model.embeding_dim=64"])


@pytest.mark.parametrize("overrides, keys", [
    (["+trainer.bogus_key=1"], "trainer.bogus_key"),
    (["+model.bogus=2", "+bogus_top=3"], "model.bogus, bogus_top"),
    (["model=llama", "+model.ratio=1:1"], "model.ratio"),  # a key of another model's schema
    (["+tokenizer.extra=1"], "tokenizer.extra"),
])
def test_appended_unknown_keys_fail(overrides, keys):
    # Hydra's append syntax (+key=value) adds keys past the structured config's own check
    with pytest.raises(ValueError, match=f"unknown config key\\(s\\) {keys}:"):
        to_config(compose_train(overrides))


def test_unknown_group_value_lists_the_options():
    with pytest.raises(MissingConfigException, match="xlstm_7_1"):
        compose_train(["model=xlstm_9_1"])


def test_heads_that_do_not_divide_the_width_fail():
    with pytest.raises(ValueError, match="num_heads"):
        OmegaConf.to_object(compose_train(["model.num_heads=3"]))
