"""Long-context scoring equals the training loss, pieces equal one pass, bytes and buckets add up (DESIGN.md §12)."""

import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.evaluation.tiny_export import MODEL_VOCAB, corpus_texts, tiny_model
from xlstm_lm.data.corpus import Document
from xlstm_lm.evaluation.perplexity import (PerplexityConfig, encode_documents, evaluate_context, join_documents,
                                            position_buckets, score_window, token_byte_counts, token_nll)

MODELS = ["xlstm", "lstm", "llama"]


def document(text: str, path: str = "doc.txt") -> Document:
    return Document(path, text, len(text.encode("utf-8")))


@pytest.fixture(scope="module")
def documents(tokenizer):
    """Three documents of different lengths (about 500, 60 and 900 tokens)."""
    texts = corpus_texts()
    return encode_documents([document(texts[1][:2000], "a"), document(texts[0][:200], "b"),
                             document(texts[3][:3500], "c")], tokenizer)


class ConstantModel(nn.Module):
    """Uniform next-token distribution: every label costs ln(V) nats."""

    is_recurrent = True

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, state=None, doc_starts=None, return_state=False):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        return (logits, state) if return_state else logits


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("piece_length", [7, 2048])
def test_loss_is_the_training_loss_of_each_window(documents, kind, piece_length):
    model, context = tiny_model(kind), 64
    result = evaluate_context(model, documents, context, PerplexityConfig(piece_length=piece_length))
    nll_sum, tokens = 0.0, 0
    with torch.no_grad():
        for doc in documents:
            for start in range(0, doc.num_labels, context):
                window = doc.ids[start:start + context + 1][None]  # fresh state for every window
                nll_sum += model(window[:, :-1], labels=window[:, 1:], reduction="sum").item()
                tokens += window.shape[1] - 1
    assert result.tokens == tokens == sum(doc.num_labels for doc in documents)
    assert result.loss == pytest.approx(nll_sum / tokens, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)
    assert result.windows == sum(math.ceil(doc.num_labels / context) for doc in documents)


def test_one_window_equals_the_training_loss_on_it(documents):
    model, doc = tiny_model("xlstm"), documents[0]
    result = evaluate_context(model, [doc], doc.num_labels, PerplexityConfig(piece_length=100))
    with torch.no_grad():
        expected = model(doc.ids[None, :-1], labels=doc.ids[None, 1:])
    assert result.windows == 1 and result.note is None
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)


def test_joined_documents_are_one_stream_with_the_same_labels(documents):
    joined = join_documents(documents)
    eos = documents[0].ids[0]
    assert joined.num_labels == sum(doc.num_labels for doc in documents)
    assert int(joined.label_bytes.sum()) == sum(int(doc.label_bytes.sum()) for doc in documents)
    assert torch.equal(joined.ids, torch.cat([doc.ids[:-1] for doc in documents] + [eos.view(1)]))
    model = tiny_model("xlstm")
    result = evaluate_context(model, [joined], 4 * joined.num_labels, PerplexityConfig(piece_length=300))
    with torch.no_grad():
        expected = model(joined.ids[None, :-1], labels=joined.ids[None, 1:])
    assert result.windows == 1 and result.loss == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", [*MODELS, "mamba"])
def test_pieces_with_carried_state_equal_one_pass(kind):
    model = tiny_model(kind)
    ids = torch.randint(0, MODEL_VOCAB, (2, 51), generator=torch.Generator().manual_seed(0))
    one_pass = score_window(model, ids[:, :-1], ids[:, 1:])
    for piece_length in (1, 7, 16):
        torch.testing.assert_close(score_window(model, ids[:, :-1], ids[:, 1:], piece_length), one_pass,
                                   atol=1e-5, rtol=1e-5)


def test_token_nll_is_the_unreduced_training_loss():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    nll = token_nll(logits, labels)
    assert nll.shape == (2, 5)
    torch.testing.assert_close(nll.mean(), F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
    assert nll[1, 3].item() == pytest.approx(-torch.log_softmax(logits[1, 3], -1)[labels[1, 3]].item(), rel=1e-6)


def test_bits_per_byte_by_hand(tokenizer):
    text = "héllo wörld 🙂"  # 6 + 1 + 6 + 1 + 4 = 18 UTF-8 bytes
    docs = encode_documents([document(text)], tokenizer)
    n = len(tokenizer.encode(text).ids)
    result = evaluate_context(ConstantModel(MODEL_VOCAB), docs, 1000, PerplexityConfig())
    assert result.bytes == 18 and result.tokens == n + 1  # every token and the closing end-of-document
    assert result.loss == pytest.approx(math.log(MODEL_VOCAB))
    assert result.perplexity == pytest.approx(MODEL_VOCAB)
    assert result.bits_per_byte == pytest.approx((n + 1) * math.log2(MODEL_VOCAB) / 18)


def test_each_character_counts_for_the_first_token_that_covers_it():
    # "a🙂b": the emoji's 4 bytes split over two byte-level tokens that both report its span (1, 2)
    assert token_byte_counts("a🙂b", [(0, 1), (1, 2), (1, 2), (2, 3)]).tolist() == [1, 4, 0, 1]
    assert token_byte_counts("abc", [(0, 2), (1, 3)]).tolist() == [2, 1]
    assert token_byte_counts("", []).tolist() == []


def test_label_bytes_sum_to_the_text_bytes(tokenizer):
    texts = ["naïve café straße 日本語 テキスト Ελληνικά мир مرحبا 🙂🚀x",
             "e\u0301 x² ∑ \u00a0 tab\tbed\r\n",
             "<|endoftext|> is plain text here", corpus_texts(1)[0]]
    for doc, text in zip(encode_documents([document(t) for t in texts], tokenizer), texts):
        assert int(doc.label_bytes.sum()) == len(text.encode("utf-8"))
        assert doc.ids[0] == doc.ids[-1] == tokenizer.token_to_id("<|endoftext|>")
        assert doc.label_bytes[-1] == 0


def test_position_buckets_are_log_spaced_up_to_the_context():
    assert position_buckets(1) == [(1, 1)]
    assert position_buckets(8) == [(1, 1), (2, 3), (4, 8)]  # a lone last position joins its neighbour
    assert position_buckets(10) == [(1, 1), (2, 3), (4, 7), (8, 10)]


def test_loss_by_position_averages_each_bucket(documents):
    model, context = tiny_model("xlstm"), 10
    result = evaluate_context(model, documents, context, PerplexityConfig())
    sums, counts = defaultdict(float), defaultdict(int)
    with torch.no_grad():
        for doc in documents:
            for start in range(0, doc.num_labels, context):
                window = doc.ids[start:start + context + 1][None]
                for position, nll in enumerate(token_nll(model(window[:, :-1]), window[:, 1:])[0].tolist(), 1):
                    sums[position.bit_length() - 1] += nll
                    counts[position.bit_length() - 1] += 1
    assert [(b.first, b.last) for b in result.loss_by_position] == [(1, 1), (2, 3), (4, 7), (8, 10)]
    assert [b.tokens for b in result.loss_by_position] == [counts[k] for k in range(4)]
    assert [b.loss for b in result.loss_by_position] == pytest.approx([sums[k] / counts[k] for k in range(4)], rel=1e-5)


def test_batches_of_windows_score_like_single_windows(documents):
    model = tiny_model("xlstm")
    single = evaluate_context(model, documents, 32, PerplexityConfig(batch_size=1))
    batched = evaluate_context(model, documents, 32, PerplexityConfig(batch_size=5))
    assert (batched.tokens, batched.bytes) == (single.tokens, single.bytes)
    assert batched.loss == pytest.approx(single.loss, rel=1e-6)
    assert [b.loss for b in batched.loss_by_position] == pytest.approx([b.loss for b in single.loss_by_position],
                                                                       rel=1e-6)


def test_documents_shorter_than_the_context_are_scored_and_noted(documents):
    longest = max(doc.num_labels for doc in documents)
    result = evaluate_context(ConstantModel(MODEL_VOCAB), documents, 4 * longest, PerplexityConfig())
    assert result.tokens == sum(doc.num_labels for doc in documents) and result.windows == len(documents)
    assert result.longest_window == longest and f"{longest} tokens" in result.note
    assert result.loss_by_position[-1].last == longest


def test_transformer_past_the_attention_limit_is_skipped(documents):
    cfg = PerplexityConfig(max_attention_tokens=16)
    skipped = evaluate_context(tiny_model("llama"), documents, 32, cfg)
    assert skipped.skipped.startswith("skipped: context exceeds the attention limit")
    assert skipped.loss is None and skipped.tokens == 0
    assert evaluate_context(tiny_model("llama"), documents, 16, cfg).skipped is None
    assert evaluate_context(tiny_model("xlstm"), documents, 32, cfg).skipped is None  # recurrent: no limit


def test_out_of_memory_is_reported_not_raised(documents):
    class OutOfMemory(ConstantModel):
        def forward(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    result = evaluate_context(OutOfMemory(MODEL_VOCAB), documents, 64, PerplexityConfig())
    assert result.skipped.startswith("skipped: out of memory") and result.loss is None


@pytest.mark.parametrize("field,value", [("context_lengths", [512, 0]), ("context_lengths", [-3]),
                                         ("context_lengths", []), ("piece_length", 0), ("batch_size", 0)])
def test_config_rejects_non_positive_values(field, value):
    with pytest.raises(ValueError, match=f"eval.{field}"):
        PerplexityConfig(**{field: value})
