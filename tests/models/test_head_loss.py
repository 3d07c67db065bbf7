"""The LM head and cross-entropy computed block by block (`linear_cross_entropy`) against F.cross_entropy on
the full logits in float64: loss and gradients, soft cap, blocks that do not divide the rows, frozen
weights, no-grad evaluation; and every model's `labels=` path against its own logits."""

import pytest
import torch
import torch.nn.functional as F

from xlstm_lm.models import build_model
from xlstm_lm.models.components import soft_cap
from xlstm_lm.models import head_loss
from xlstm_lm.models.head_loss import linear_cross_entropy


def reference_loss(features, weight, labels, cap=None, reduction="mean"):
    logits = features @ weight.T
    return F.cross_entropy(soft_cap(logits, cap) if cap else logits, labels, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("block_rows", [1, 8, 37, 100])
def test_loss_and_gradients_equal_cross_entropy_of_the_logits(reduction, cap, block_rows):
    generator = torch.Generator().manual_seed(block_rows)
    features = torch.randn(37, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = (2 * torch.randn(29, 6, dtype=torch.float64, generator=generator)).requires_grad_()
    labels = torch.randint(0, 29, (37,), generator=generator)
    grad_scale = torch.tensor(1.7, dtype=torch.float64)  # the backward must scale by the incoming gradient
    expected = reference_loss(features, weight, labels, cap, reduction)
    expected_grads = torch.autograd.grad(expected * grad_scale, (features, weight))
    loss = linear_cross_entropy(features, weight, labels, soft_cap=cap, reduction=reduction, block_rows=block_rows)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    for grad, reference in zip(torch.autograd.grad(loss * grad_scale, (features, weight)), expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)


def test_frozen_weight_no_grad_and_float32():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator)  # frozen: only the features' gradient is made
    labels = torch.randint(0, 300, (50,), generator=generator)
    loss = linear_cross_entropy(features, weight, labels, block_rows=16)
    (grad,) = torch.autograd.grad(loss, features)
    expected = reference_loss(features, weight, labels)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, features)[0])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(features, weight, labels), expected.detach())


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_evaluation_does_no_gradient_work(mode, monkeypatch):
    # Validation runs without gradients: the loss must not go through the function that computes them
    # (its inputs still require grad there, which is all ctx.needs_input_grad sees).
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(20, 8, generator=generator, requires_grad=True)
    weight = torch.randn(30, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 30, (20,), generator=generator)
    expected = reference_loss(features, weight, labels, reduction="sum").detach()

    def refuse(*args):
        raise AssertionError("gradients computed under " + mode.__name__)

    monkeypatch.setattr(head_loss._LinearCrossEntropy, "apply", refuse)
    with mode():
        torch.testing.assert_close(linear_cross_entropy(features, weight, labels, reduction="sum"), expected)


def test_under_bf16_autocast_products_are_bf16_and_the_rest_float32():
    # Mixed-precision training: the head's products run in bf16 like an autocast Linear would, the softmax,
    # loss and accumulated head gradient stay float32.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 32, generator=generator, requires_grad=True)
    weight = (0.2 * torch.randn(500, 32, generator=generator)).requires_grad_()
    labels = torch.randint(0, 500, (64,), generator=generator)
    expected = reference_loss(features, weight, labels)
    expected_grads = torch.autograd.grad(expected, (features, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(features, weight, labels, block_rows=16)
    grads = torch.autograd.grad(loss, (features, weight))
    assert loss.dtype == grads[0].dtype == grads[1].dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=0)  # bf16 logits: 8 bits of mantissa
    for grad, reference in zip(grads, expected_grads):
        assert (grad - reference).norm() / reference.norm() < 2e-2


def test_bad_arguments_are_named():
    features, weight, labels = torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="reduction must be one of"):
        linear_cross_entropy(features, weight, labels, reduction="none")
    with pytest.raises(ValueError, match=r"features \(N, D\), weight \(V, D\), labels \(N,\)"):
        linear_cross_entropy(features, torch.randn(5, 4), labels)


@pytest.mark.parametrize("model_config", [
    dict(architecture="xlstm", ratio="1:1", embedding_dim=32, num_blocks=2, num_heads=4, chunk_size=8),
    dict(architecture="xlstm_large", logit_soft_cap=3.0, embedding_dim=32, num_blocks=2, num_heads=4,
         chunk_size=8),
    dict(architecture="xlstm", ratio="1:0", tie_embeddings=True, embedding_dim=32, num_blocks=1, num_heads=4,
         chunk_size=8),
    dict(architecture="llama", embedding_dim=32, num_blocks=2, num_heads=4),
    dict(architecture="lstm", embedding_dim=32, num_blocks=2),
])
def test_models_labels_path_equals_their_logits(model_config):
    torch.manual_seed(0)
    model = build_model({**model_config, "vocab_size": 64})
    ids = torch.randint(0, 64, (2, 21))
    logits = model(ids[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    loss = model(ids[:, :-1], labels=ids[:, 1:])
    torch.testing.assert_close(loss, expected)
    for grad, reference in zip(torch.autograd.grad(loss, list(model.parameters())), expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)
    loss_sum, state = model(ids[:, :-1], labels=ids[:, 1:], reduction="sum", return_state=True)
    torch.testing.assert_close(loss_sum, expected * ids[:, 1:].numel())


def test_ignored_labels_are_not_scored_and_answer_hits_count_answers():
    # the synthetic tasks' answer-only loss: labels at IGNORE_INDEX neither count in the mean nor get a gradient
    torch.manual_seed(0)
    model = build_model(dict(architecture="llama", embedding_dim=16, num_blocks=2, num_heads=2, vocab_size=64))
    ids = torch.randint(0, 64, (2, 9))
    labels = torch.full((2, 9), head_loss.IGNORE_INDEX)
    labels[:, -1], labels[0, 3] = ids[:, 0], 5
    logits = model(ids)
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=head_loss.IGNORE_INDEX)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    loss = model(ids, labels=labels)
    torch.testing.assert_close(loss, expected)
    for grad, reference in zip(torch.autograd.grad(loss, list(model.parameters())), expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model(ids, labels=labels, reduction="sum"), expected * 3)

    logits = torch.zeros(2, 3, 4)
    logits[0, 1, 2] = logits[0, 2, 1] = logits[1, 2, 3] = 1.0  # greedy answers 2 and 1 in row 0, 3 in row 1
    answers = torch.tensor([[-100, 2, 0], [-100, -100, 3]])  # row 0: one of two right; row 1: right
    assert [int(count) for count in head_loss.answer_hits(logits, answers)] == [2, 3, 1]
