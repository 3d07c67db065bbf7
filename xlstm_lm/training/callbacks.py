"""Training callbacks: throughput (tokens/s) in the progress bar and the logs, the NaN/spike guard, a
checkpoint on Ctrl-C, and continuous step numbers in the logs of a resumed run."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput

from xlstm_lm.training.flops import COMPUTE_DTYPES, peak_flops, training_flops_per_token

log = logging.getLogger(__name__)


class TokenThroughput(L.Callback):
    """Logs `train/tokens_per_s` (tokens of all ranks per second) and `train/mfu` (model FLOPs utilization) to
    the progress bar and the logs. Lightning's `Throughput` computes both over the last `log_every_n_steps`
    batches (the interval between logged rows), from the FLOPs per token of flops.py and the device's peak at
    the run's precision (`flops.peak_flops`; MFU only where that is known or `peak_tflops` is given).

    Only the time inside training batches counts (not validation, checkpoints or data loading), and the first
    batch of a run only opens the window: it pays one-off costs (allocations, warm-up).

    Note: not Lightning's ThroughputMonitor: it logs other names (`train/device/items_per_sec`, ...), only to
    the logger, and also rows for validation batches at their own step numbers.
    """

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops

    def on_train_start(self, trainer, pl_module):
        peak = peak_flops(trainer.strategy.root_device, COMPUTE_DTYPES.get(trainer.precision), self.peak_tflops)
        self.throughput = Throughput(available_flops=peak, world_size=trainer.world_size,
                                     window_size=max(trainer.log_every_n_steps, 1) + 1)
        self.flops_per_token = None  # on the first batch: it depends on the sequence length
        self.seconds, self.batches, self.samples, self.tokens = 0.0, 0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._start
        batch_size, seq_len = batch["input_ids"].shape
        if self.flops_per_token is None:
            self.flops_per_token = training_flops_per_token(pl_module.model, seq_len)
        self.batches += 1
        self.samples += batch_size
        self.tokens += batch_size * seq_len
        self.throughput.update(time=self.seconds, batches=self.batches, samples=self.samples, lengths=self.tokens,
                               flops=self.flops_per_token * batch_size * seq_len)
        rates = self.throughput.compute()
        if "device/items_per_sec" in rates:
            pl_module.log("train/tokens_per_s", rates["device/items_per_sec"] * trainer.world_size, prog_bar=True)
        if "device/mfu" in rates:
            pl_module.log("train/mfu", rates["device/mfu"], prog_bar=True)


class ContinuousLogSteps(L.Callback):
    """Logs a resumed run at the step numbers an uninterrupted run uses (the optimizer steps done before the
    logged one). Lightning adds one to its logging step on a restart, right for a checkpoint saved within a
    step but one too many for last.ckpt saved after the run's last step, so a run trained longer skipped a
    step in its metrics. Optimizer steps and logged steps are the same count here (skipped steps count too).

    Note: Lightning has no public way to set this counter. Logging a `step` metric would relabel the rows,
    but Lightning also decides from this counter which steps get a row (every `log_every_n_steps`), and such
    rows lose their `epoch` column.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


NONFINITE_ACTIONS = ("skip", "stop")


class LossGuard(L.Callback):
    """Skips the optimizer step (or stops the run) when the loss is NaN/inf or spikes above
    `spike_factor` times its running mean.

    The loss of the micro-batches of one optimizer step is summed in `on_before_backward`; the verdict comes in
    `on_before_optimizer_step`, after the backward and before clipping. Skipping sets every gradient to None,
    so AdamW leaves the weights and its moments untouched (the step and learning-rate counters still advance).
    The verdict is summed over ranks, so all of them skip or stop together and DDP/FSDP never deadlock.

    Args:
        action: "skip" or "stop" (raise FloatingPointError naming the step).
        spike_factor: a finite loss above factor x the running mean is a spike; None: no spike check.
        max_consecutive_skips: stop after this many skipped steps in a row (the weights themselves may be bad).
        smoothing: of the running mean (an exponential average over every finite loss, spikes included, so
            a lasting rise is accepted after a while).
        min_steps: finite losses seen before spikes are judged.
    """

    def __init__(self, action: str = "skip", spike_factor: float | None = None, max_consecutive_skips: int = 10,
                 smoothing: float = 0.98, min_steps: int = 20):
        self.action, self.spike_factor = action, spike_factor
        self.max_consecutive_skips, self.smoothing, self.min_steps = max_consecutive_skips, smoothing, min_steps
        self.running_mean, self.seen, self.consecutive_skips, self.skipped = 0.0, 0, 0, 0
        self._step_loss = 0.0

    def on_before_backward(self, trainer, pl_module, loss):
        self._step_loss += loss.detach().float()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        loss = float(self._step_loss)
        self._step_loss = 0.0
        problem = self._problem(loss)
        bad_ranks = trainer.strategy.reduce(torch.tensor(float(problem is not None), device=pl_module.device),
                                            reduce_op="sum")
        if math.isfinite(loss):
            self.seen += 1
            self.running_mean = loss if self.seen == 1 else self.smoothing * self.running_mean + (1 - self.smoothing) * loss
        if bad_ranks == 0:
            self.consecutive_skips = 0
            return
        step = trainer.global_step
        problem = problem or "a non-finite or spiking loss on another rank"
        if self.action == "stop" or self.consecutive_skips + 1 > self.max_consecutive_skips:
            hint = ("set trainer.nonfinite=skip to skip such steps" if self.action == "stop"
                    else f"{self.consecutive_skips} steps in a row were skipped before it")
            raise FloatingPointError(f"training stopped at step {step}: {problem} ({hint}; lower optimizer.lr or "
                                     f"resume from the last checkpoint)")
        pl_module.zero_grad(set_to_none=True)
        self.consecutive_skips += 1
        self.skipped += 1
        log.warning("step %d: %s; optimizer step skipped", step, problem)
        pl_module.log("train/skipped_steps", float(self.skipped))

    def _problem(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if self.spike_factor and self.seen >= self.min_steps and loss > self.spike_factor * self.running_mean:
            return f"loss spike {loss:.4g} > {self.spike_factor} x running mean {self.running_mean:.4g}"
        return None

    def state_dict(self) -> dict:
        return {"running_mean": self.running_mean, "seen": self.seen, "skipped": self.skipped,
                "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


class TrainingInterrupted(Exception):
    """Raised out of `Trainer.fit` after Ctrl-C, once the checkpoint of the finished step is written."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; checkpoint written to {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class CheckpointOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) lets the current optimizer step finish, writes `checkpoint` and ends the run with
    `TrainingInterrupted` before the next step, so the same command resumes from that step; a second Ctrl-C
    interrupts at once (`stopped_at_once`; a checkpoint being written is abandoned, the previous one stays, as
    AtomicCheckpointIO writes under another name). A process started with SIGINT ignored (e.g. in the
    background of a script) keeps ignoring it.

    The request is combined over ranks after every optimizer step (one all-reduce when there are several),
    so all ranks stop at the same step and write the checkpoint together. The run ends at the start of the
    next batch, not at the end of this one, so that Lightning finishes the step (its logs, checkpoints and
    any validation due) exactly as an uninterrupted run does.
    """

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self.requested = False
        self.stopped_at_once = False
        self._stopped_at: int | None = None
        self._previous_handler = None  # set while this callback's handler is installed

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            return
        self._previous_handler = previous if previous is not None else signal.default_int_handler
        signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._stop_at_once)
        log.warning("Ctrl-C: stopping after this step and writing a checkpoint (Ctrl-C again stops at once)")

    def _stop_at_once(self, signum, frame):
        """The second Ctrl-C: a KeyboardInterrupt wherever the run is, which Lightning turns into a shutdown."""
        self.stopped_at_once = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third one must not interrupt the shutdown
        raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation: the optimizer step is not done
        requested = self.requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and self._stopped_at is None:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)  # the full training state
            self._stopped_at = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._stopped_at is not None:
            raise TrainingInterrupted(self._stopped_at, self.checkpoint)

    def teardown(self, trainer, pl_module, stage):
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
