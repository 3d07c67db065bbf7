"""Stateful training (data.stateful): a window continues from the detached state the window before ended in, so
consecutive windows score exactly what one pass over the rows' stream scores; a new stream starts from a fresh
state; a model without a fixed-size state is refused."""

import pytest
import torch

from xlstm_lm.models import LlamaConfig, XLSTMConfig
from xlstm_lm.training.module import LanguageModelModule
from xlstm_lm.training.optim import OptimizerConfig, SchedulerConfig

B, S, VOCAB = 2, 12, 64


def stateful_module(model) -> LanguageModelModule:
    return LanguageModelModule.from_configs(model, OptimizerConfig(), SchedulerConfig(), max_steps=1, stateful=True)


def test_windows_carry_the_detached_state_exactly_as_one_pass_over_the_stream():
    torch.manual_seed(0)
    module = stateful_module(XLSTMConfig(vocab_size=VOCAB, embedding_dim=16, num_blocks=2, num_heads=2, ratio="1:1",
                                         chunk_size=4, backend="native"))
    module.model.double()
    ids = torch.randint(0, VOCAB, (B, 2 * S + 1))
    doc_starts = torch.zeros(B, 2 * S, dtype=torch.bool)
    doc_starts[:, 0] = doc_starts[1, S + 5] = True  # row 1: a document starts inside the second window
    windows = [{"input_ids": ids[:, k * S : (k + 1) * S], "labels": ids[:, k * S + 1 : (k + 1) * S + 1],
                "doc_starts": doc_starts[:, k * S : (k + 1) * S], "continues": torch.full((B,), k > 0)}
               for k in range(2)]

    def summed_loss(first: int, stop: int, state=None):  # the model's own pass over stream tokens [first, stop)
        return module.model(ids[:, first:stop], state=state, doc_starts=doc_starts[:, first:stop],
                            labels=ids[:, first + 1 : stop + 1], reduction="sum")

    losses = [module._stateful_loss(window) * (B * S) for window in windows]
    carried = [tensor for block in module.carried_state for tensor in block]
    assert carried and not any(tensor.requires_grad for tensor in carried)  # no gradient into the next window
    whole, first = summed_loss(0, 2 * S), summed_loss(0, S)
    torch.testing.assert_close(losses[0], first, rtol=1e-13, atol=0)
    torch.testing.assert_close(losses[1], whole - first, rtol=1e-10, atol=0)

    restart = {**windows[1], "continues": torch.zeros(B, dtype=torch.bool)}  # a new stream: no state carried in
    torch.testing.assert_close(module._stateful_loss(restart) * (B * S), summed_loss(S, 2 * S), rtol=1e-13, atol=0)


def test_a_model_without_a_fixed_size_state_is_refused():
    with pytest.raises(ValueError, match="data.stateful=true .* model=llama has none"):
        stateful_module(LlamaConfig(vocab_size=VOCAB, embedding_dim=16, num_heads=2, num_layers=1))
