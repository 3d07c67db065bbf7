"""The Transformer, LSTM and Mamba baselines: parameter parity with xLSTM, caches and states, exact math."""

import pytest
import torch

from xlstm_lm.models import (LlamaConfig, LlamaLM, LSTMCell, LSTMConfig, LSTMLM, MambaConfig, MambaLM, XLSTMConfig,
                             build_model)
from xlstm_lm.models.llama import rotary

SIZES = [(256, 8, 8192), (768, 24, 50304), (1024, 48, 50304), (1536, 48, 50304), (2048, 48, 50304)]


@pytest.mark.parametrize("dim,blocks,vocab", SIZES)
@pytest.mark.parametrize("arch", ["llama", "lstm"])
def test_baselines_land_within_ten_percent_of_the_xlstm_size(arch, dim, blocks, vocab):
    common = dict(embedding_dim=dim, num_blocks=blocks, num_heads=4, vocab_size=vocab)
    with torch.device("meta"):
        xlstm = build_model(XLSTMConfig(**common))
        baseline = build_model({"architecture": arch, **common})
    ratio = baseline.num_parameters() / xlstm.num_parameters()
    assert abs(ratio - 1) < 0.10, ratio


def tiny(cls, config_cls, **overrides):
    torch.manual_seed(0)
    return cls(config_cls(vocab_size=61, embedding_dim=32, num_blocks=4, num_heads=4, **overrides)).double()


@pytest.mark.parametrize("make", [lambda: tiny(LlamaLM, LlamaConfig), lambda: tiny(LSTMLM, LSTMConfig),
                                  lambda: tiny(MambaLM, MambaConfig, num_layers=2, chunk_size=8)])
def test_cache_or_state_in_pieces_and_token_by_token_equals_one_pass(make):
    model = make()
    ids = torch.randint(0, 61, (2, 19))
    full = model(ids)
    pieces, state = [], None
    for piece in ids.split([7, 1, 11], dim=1):
        logits, state = model(piece, state=state, return_state=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full)
    steps, state = [], None
    for t in range(ids.shape[1]):
        logits, state = model(ids[:, t:t + 1], state=state, return_state=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_transformer_is_causal_and_masks_other_documents():
    model = tiny(LlamaLM, LlamaConfig)
    ids = torch.randint(0, 61, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 61
    torch.testing.assert_close(model(ids)[:, :10], model(changed)[:, :10])  # no look-ahead
    assert not torch.allclose(model(ids)[:, 10:], model(changed)[:, 10:])
    # with a document start at 6, the second document's outputs ignore the first (RoPE is relative)
    starts = torch.zeros(1, 16, dtype=torch.bool)
    starts[0, 6] = True
    other_first_doc = ids.clone()
    other_first_doc[0, :6] = (other_first_doc[0, :6] + 5) % 61
    torch.testing.assert_close(model(ids, doc_starts=starts)[:, 6:], model(other_first_doc, doc_starts=starts)[:, 6:])
    with pytest.raises(ValueError, match="fresh state"):
        _, cache = model(ids, return_state=True)
        model(ids, state=cache, doc_starts=starts)


def test_rotary_preserves_norms_and_depends_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(rotary(q, 5, 10000.0).norm(), q.norm())
    score = lambda a, b: (rotary(q, a, 10000.0) * rotary(k, b, 10000.0)).sum()  # noqa: E731
    torch.testing.assert_close(score(7, 3), score(104, 100))


def test_lstm_lm_runs_the_same_math_as_the_cell():
    model = tiny(LSTMLM, LSTMConfig, num_layers=1)
    cell = LSTMCell(32, 32).double()
    lstm = model.lstm
    # torch.nn.LSTM orders gate rows (i, f, g, o); LSTMCell orders them (f, i, o, candidate)
    order = [1, 0, 3, 2]
    with torch.no_grad():
        for ours, theirs in ((cell.input_weight, lstm.weight_ih_l0), (cell.recurrent_weight, lstm.weight_hh_l0)):
            ours.copy_(torch.cat([theirs.view(4, 32, -1)[g] for g in order]))
        cell.bias.copy_(torch.cat([(lstm.bias_ih_l0 + lstm.bias_hh_l0).view(4, 32)[g] for g in order]))
    x = torch.randn(3, 9, 32, dtype=torch.float64)
    expected, state = [], (torch.zeros(3, 32, dtype=torch.float64), torch.zeros(3, 32, dtype=torch.float64))
    for t in range(9):
        state = cell(x[:, t], state)
        expected.append(state[0])
    torch.testing.assert_close(lstm(x)[0], torch.stack(expected, 1))


def test_lstm_refuses_document_resets_and_layer_counts_follow_the_size():
    model = tiny(LSTMLM, LSTMConfig)
    assert model.lstm.num_layers == 3 and not model.supports_doc_starts
    with pytest.raises(ValueError, match="document starts"):
        model(torch.zeros(1, 3, dtype=torch.long), doc_starts=torch.zeros(1, 3, dtype=torch.bool))
    assert len(tiny(LlamaLM, LlamaConfig).layers) == 2
    with pytest.raises(ValueError, match="unknown model architecture"):
        build_model({"architecture": "gpt"})
