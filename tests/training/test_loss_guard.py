"""The loss guard: a NaN or spiking loss skips the optimizer step (weights and AdamW moments untouched) or
stops the run with the step number."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from xlstm_lm.training.callbacks import LossGuard


class Regression(L.LightningModule):
    """A linear model whose loss is replaced by `poison[step]` (NaN, or a factor) at chosen steps."""

    def __init__(self, poison: dict[int, float]):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.poison = poison
        self.weights = {}  # global step -> weights after the batch

    def training_step(self, batch, batch_idx):
        loss = (self.net(batch[0]) - batch[1]).pow(2).mean()
        value = self.poison.get(self.global_step)
        if value is not None:
            loss = loss * value if math.isfinite(value) else loss * torch.tensor(value)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights[self.global_step] = self.net.weight.detach().clone()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def fit(module, guard, steps=30):
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[guard])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return trainer


def test_nan_loss_skips_exactly_that_step():
    module = Regression({3: float("nan")})
    guard = LossGuard("skip")
    trainer = fit(module, guard, steps=6)
    assert trainer.global_step == 6 and guard.skipped == 1
    # step 3 (global_step 3 -> 4) left the weights as they were; its neighbours moved them
    assert torch.equal(module.weights[4], module.weights[3])
    assert not torch.equal(module.weights[3], module.weights[2]) and not torch.equal(module.weights[5], module.weights[4])
    assert torch.isfinite(module.net.weight).all()


def test_nan_loss_stops_with_the_step_number():
    with pytest.raises(FloatingPointError, match="training stopped at step 3: the loss is nan"):
        fit(Regression({3: float("nan")}), LossGuard("stop"))


def test_spike_above_factor_times_running_mean_is_skipped_and_small_rises_are_not():
    module = Regression({24: 50.0, 26: 1.5})
    guard = LossGuard("skip", spike_factor=5.0, min_steps=20)
    fit(module, guard)
    assert guard.skipped == 1 and torch.equal(module.weights[25], module.weights[24])


def test_too_many_skips_in_a_row_stop_the_run():
    with pytest.raises(FloatingPointError, match="step 5: .*3 steps in a row were skipped"):
        fit(Regression({step: float("inf") for step in range(2, 30)}), LossGuard("skip", max_consecutive_skips=3))
