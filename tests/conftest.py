"""Shared fixtures: the real train config composed with Hydra and shrunk to seconds on a CPU."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

# README's test command runs two pytest-xdist workers on the two cores: each keeps to one thread (and so do the
# processes it starts), since two processes whose OpenMP threads all spin on both cores slow each other down
# many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402 (after the thread count it reads)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Triton reads TRITON_INTERPRET when its own library functions are decorated, i.e. at `import triton`:
# set it before anything imports triton, so the Triton kernels run on CPU tensors where there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hydra import compose, initialize_config_dir

from xlstm_lm.cli.schemas import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
# A small slice of the embedded default corpus: real Python source, present on every machine.
SMALL_CORPUS = str(Path(sysconfig.get_paths()["stdlib"]) / "email")


def compose_train(overrides: list[str] = ()):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def small_run_overrides(cache_dir: Path, max_steps: int = 4) -> list[str]:
    """Overrides that make `train` take seconds: a tiny model on a slice of the stdlib."""
    return [
        f"data.root={SMALL_CORPUS}",
        f"data.cache_dir={cache_dir}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "tokenizer.vocab_size=512",
        "model.embedding_dim=32",
        "model.num_blocks=2",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=2",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_steps=2",
    ]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One prepared cache for the small corpus, shared by the training tests."""
    return tmp_path_factory.mktemp("data_cache")
