"""Tokens/s and MFU: Lightning's Throughput with our FLOPs per token, against the peak of the precision the run
computes in (a float32 run is not measured against the bf16 peak)."""

import lightning as L
import pytest
import torch

from xlstm_lm.training import callbacks
from xlstm_lm.training.callbacks import TokenThroughput
from xlstm_lm.training.flops import training_flops_per_token
from xlstm_lm.training.module import LanguageModelModule

TINY = {"architecture": "xlstm", "vocab_size": 64, "embedding_dim": 16, "num_blocks": 2, "num_heads": 2,
        "ratio": "1:1"}


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_tokens_per_s_and_mfu_at_the_precision_of_the_run(monkeypatch, precision, dtype):
    asked = []

    def peak_flops(device, dtype, override_tflops):
        asked.append((device.type, dtype))
        return override_tflops * 1e12

    monkeypatch.setattr(callbacks, "peak_flops", peak_flops)
    module = LanguageModelModule(TINY, {}, {}, max_steps=4)
    tokens = torch.randint(64, (4, 2, 17), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": rows[:, :-1], "labels": rows[:, 1:]} for rows in tokens]
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=4, log_every_n_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TokenThroughput(peak_tflops=0.5)])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert asked == [("cpu", dtype)]
    tokens_per_s, mfu = (float(trainer.callback_metrics[name]) for name in ("train/tokens_per_s", "train/mfu"))
    assert tokens_per_s > 0
    assert mfu == pytest.approx(tokens_per_s * training_flops_per_token(module.model, 16) / 0.5e12, rel=1e-5)
