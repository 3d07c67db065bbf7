"""Two real processes under Lightning's ddp (gloo): each rank gets its own share of every global batch, the
ranks together see exactly what one process with the global batch sees, and validation scores each window once."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

from xlstm_lm.data import TokenDataModule

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def test_two_ranks_share_the_global_batches_of_one_process(prepared_configs, tmp_path):
    data, tokenizer = prepared_configs
    data = dataclasses.replace(data, batch_size=2)
    configs_file = tmp_path / "configs.pkl"
    configs_file.write_bytes(pickle.dumps((data, tokenizer)))
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_batches.py")), str(configs_file),
                             str(tmp_path), str(STEPS)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    single = TokenDataModule(dataclasses.replace(data, batch_size=4), tokenizer, seed=11)
    single.setup("fit")
    expected = [batch["input_ids"].tolist() for _, batch in zip(range(STEPS), single.train_dataloader())]
    assert [ranks[0]["train"][step] + ranks[1]["train"][step] for step in range(STEPS)] == expected

    every_val_window = [window for batch in single.val_dataloader() for window in batch["input_ids"].tolist()]
    scored = ranks[0]["val"] + ranks[1]["val"]
    assert sorted(scored) == sorted(every_val_window)
    assert ranks[0]["val"] == every_val_window[0::2] and ranks[1]["val"] == every_val_window[1::2]
