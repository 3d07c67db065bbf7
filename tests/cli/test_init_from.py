"""`train.py init_from=<folder>`: continued pretraining from our export or a Hugging Face xLSTM folder."""

import logging

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli import loading
from xlstm_lm.cli.train import train
from xlstm_lm.interop.huggingface import export_folder

# One AdamW step moves a weight by at most the learning rate (1e-3 at step 0 of the 2-step warmup to 2e-3) plus its
# decay; a model that did not start from the folder differs from it by the spread of a random initialization (the
# runs below use another seed than the folder's, whose own initialization would be close to its weights too).
ONE_STEP = 2e-3
OTHER_SEED = "seed=7"


def max_weight_difference(first, second) -> float:
    first, second = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.fixture(scope="module")
def paper_export(tmp_path_factory, data_cache):
    run_dir = tmp_path_factory.mktemp("origin")
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), run_dir)
    return run_dir / "export"


def test_a_run_starts_from_an_export_with_its_tokenizer_and_a_resume_does_not_read_it_again(
        tmp_path, data_cache, paper_export, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    # another tokenizer size asked for: the folder's tokenizer wins, as its ids are the ones the weights know
    overrides = [*small_run_overrides(data_cache, max_steps=1), OTHER_SEED, f"init_from={paper_export}",
                 "tokenizer.vocab_size=300"]
    with caplog.at_level(logging.INFO):
        train(compose_train(overrides), run_dir)
    assert f"the model starts from the weights of {paper_export} (export)" in caplog.text
    assert (run_dir / "export" / "tokenizer.json").read_text() == (paper_export / "tokenizer.json").read_text()
    assert max_weight_difference(run_dir / "export", paper_export) <= ONE_STEP

    def must_not_read(self):
        raise AssertionError("a resumed run read the init_from weights again")

    monkeypatch.setattr(loading.PretrainedFolder, "weights", must_not_read)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        metrics = train(compose_train([*overrides[:-2], "trainer.max_steps=2", *overrides[-2:]]), run_dir)
    assert f"init_from={paper_export} is not read again: the run resumes from" in caplog.text
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_a_run_starts_from_a_hugging_face_folder(tmp_path, data_cache):
    origin = tmp_path / "origin"
    large = [*small_run_overrides(data_cache, max_steps=1), "model=xlstm_large"]
    train(compose_train(large), origin)
    hf_folder = export_folder(origin / "export", tmp_path / "hf", weight_mode="fused")

    train(compose_train([*large, OTHER_SEED, f"init_from={hf_folder}"]), tmp_path / "run")
    assert max_weight_difference(tmp_path / "run" / "export", origin / "export") <= ONE_STEP
    assert (tmp_path / "run" / "export" / "tokenizer.json").read_text() == (hf_folder / "tokenizer.json").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["model.num_blocks=3"], "model.num_blocks: folder 2 vs now 3): compose the folder's model, e.g. with "
                             "model.num_blocks=2"),
    (["model=xlstm_large"], "holds a 'xlstm' model (export) but the composed model is 'xlstm_large'"),
    (["model.vocab_size=1024"], "model.vocab_size: folder 512 vs now 1024"),
])
def test_a_model_other_than_the_folders_is_refused_before_any_data_work(tmp_path, paper_export, overrides, message):
    cache = tmp_path / "cache"
    config = compose_train([*small_run_overrides(cache), f"init_from={paper_export}", *overrides])
    with pytest.raises(ValueError) as refused:
        train(config, tmp_path / "run")
    assert message in str(refused.value)
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_backend_and_chunk_size_stay_the_runs_own(tmp_path, paper_export):
    from xlstm_lm.cli.schemas import to_config
    from xlstm_lm.cli.train import starting_point

    config = to_config(compose_train([f"init_from={paper_export}", "model.embedding_dim=32", "model.num_blocks=2",
                                      "model.backend=native", "model.chunk_size=16"]))
    config, start = starting_point(config)
    assert (config.model.backend, config.model.chunk_size) == ("native", 16)
    assert config.model.vocab_size == start.config.vocab_size == 512
    assert config.tokenizer.path == str((paper_export / "tokenizer.json").resolve())


def test_a_folder_without_config_is_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json not found; give an export folder"):
        loading.read_pretrained_folder(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match="neither an xlstm-lm export's config"):
        loading.read_pretrained_folder(str(tmp_path / "other"))
