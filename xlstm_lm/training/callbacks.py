"""Training callbacks: throughput (tokens/s) in the progress bar and the logs."""

from __future__ import annotations

import time

import lightning as L


class TokenThroughput(L.Callback):
    """Logs `train/tokens_per_s`: tokens of all ranks per second of wall time, smoothed over steps, and
    `train/mfu` (model FLOPs utilization) when the FLOPs per token and the device's peak are known.

    The first step is left out of the average: it pays one-off costs (allocations, warm-up).
    """

    def __init__(self, smoothing: float = 0.9, flops_per_token: float | None = None,
                 peak_flops_per_device: float | None = None):
        self.smoothing = smoothing
        self.flops_per_token, self.peak_flops_per_device = flops_per_token, peak_flops_per_device
        self._start = None
        self._rate = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        elapsed = time.perf_counter() - self._start
        tokens = batch["input_ids"].numel() * trainer.world_size
        rate = tokens / max(elapsed, 1e-9)
        if batch_idx == 0 and self._rate is None:
            self._rate = 0.0 if trainer.global_step <= 1 else rate
            return
        self._rate = rate if not self._rate else self.smoothing * self._rate + (1 - self.smoothing) * rate
        pl_module.log("train/tokens_per_s", self._rate, prog_bar=True)
        if self.flops_per_token and self.peak_flops_per_device:
            mfu = self._rate * self.flops_per_token / (self.peak_flops_per_device * trainer.world_size)
            pl_module.log("train/mfu", mfu, prog_bar=True)
