"""Next-token cross-entropy straight from the final features, without materializing the logits.

The LM head and the cross-entropy are done together in blocks of rows: each block's logits are made,
turned into its loss and its logit gradient (softmax minus one-hot) while they are still in cache, and
multiplied into the feature and head-weight gradients right away. The (N, V) logits, their log-softmax
and its gradient are never held in memory (with a 50k vocabulary and 16k tokens per batch that is
3.2 GB of float32 per tensor), and on CPU the element-wise passes over them run from cache.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")
IGNORE_INDEX = -100  # a label that is not scored (PyTorch's cross-entropy default); the synthetic tasks' non-answers


def _blockwise_loss(features, weight, labels, soft_cap, reduction, block_rows, want_features: bool,
                    want_weight: bool):
    """The loss, the factor `reduction` scaled the sum by, and, where wanted, the gradients of the summed
    loss with respect to the features and the head weight (else None)."""
    dtype = torch.promote_types(features.dtype, torch.float32)  # float32, or float64 for float64 inputs
    grad_features = torch.empty_like(features) if want_features else None
    grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if want_weight else None
    total = torch.zeros((), dtype=torch.float64, device=features.device)
    scored = labels != IGNORE_INDEX  # a mask, not a selection: shapes stay static under torch.compile
    for start in range(0, features.shape[0], block_rows):
        rows = features[start:start + block_rows]
        row_scored = scored[start:start + block_rows, None]
        targets = labels[start:start + block_rows, None].clamp(min=0)  # an ignored row gathers some logit, unused
        product = rows @ weight.T  # (n, V); bf16 under autocast
        logits = product.to(dtype)
        if soft_cap:
            logits = logits.div_(soft_cap).tanh_()
            capped_slope = 1.0 - logits.square()  # d capped / d raw = 1 - tanh²
            logits = logits.mul_(soft_cap)
        log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
        total += torch.where(row_scored, log_normalizer - logits.gather(1, targets), 0.0).sum(dtype=torch.float64)
        if not (want_features or want_weight):
            continue
        grad_logits = logits.sub_(log_normalizer).exp_()  # softmax, in place of the logits
        grad_logits.scatter_add_(1, targets, grad_logits.new_full(targets.shape, -1.0)).mul_(row_scored)
        if soft_cap:
            grad_logits.mul_(capped_slope)
        if want_features:
            grad_features[start:start + block_rows] = grad_logits.to(weight.dtype) @ weight
        if want_weight and product.dtype == dtype:
            grad_weight.addmm_(grad_logits.T, rows.to(dtype))
        elif want_weight:  # in-place addmm_ would skip autocast: multiply in its dtype, add in float32
            grad_weight += grad_logits.T.to(product.dtype) @ rows.to(product.dtype)
    scale = 1.0 / scored.sum(dtype=torch.float64) if reduction == "mean" else 1.0  # the mean over scored rows
    return (total * scale).to(dtype), scale, grad_features, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss of features @ weightᵀ (optionally soft-capped) against labels; the gradients are computed in the
    forward (the loss is a scalar, so the backward only scales them)."""

    @staticmethod
    def forward(ctx, features, weight, labels, soft_cap, reduction, block_rows):
        loss, scale, grad_features, grad_weight = _blockwise_loss(
            features, weight, labels, soft_cap, reduction, block_rows, *ctx.needs_input_grad[:2])
        ctx.scale = scale.to(loss.dtype) if torch.is_tensor(scale) else scale  # the gradients' dtype
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_features, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_features, grad_weight = ctx.saved_tensors
        scale = grad_loss * ctx.scale
        return (None if grad_features is None else grad_features * scale.to(grad_features.dtype),
                None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
                None, None, None, None)


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         soft_cap: float | None = None, reduction: str = "mean",
                         block_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy in nats of softmax(cap(features @ weightᵀ)) against labels, as F.cross_entropy computes it.

    Args:
        features: (N, D) final features; weight: (V, D) head weight; labels: (N,) token ids in [0, V), or
            `IGNORE_INDEX` for rows that are not scored (no loss, no gradient, not counted by the mean).
        soft_cap: if set, logits are cap · tanh(logits / cap) before the softmax.
        reduction: "mean" or "sum" over the scored rows.
        block_rows: rows per block; by default blocks of about 2M logits on CPU (8 MB, cache-sized) and 128M on
            GPUs (512 MB: few blocks, so adding each block's head-weight gradient stays cheap), 128 rows at least.

    Returns:
        The loss, a scalar in float32 (float64 for float64 inputs).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if features.dim() != 2 or labels.shape != features.shape[:1] or weight.shape[1:] != features.shape[1:]:
        raise ValueError(f"linear_cross_entropy: features (N, D), weight (V, D), labels (N,) expected, got "
                         f"{tuple(features.shape)}, {tuple(weight.shape)}, {tuple(labels.shape)}")
    if block_rows is None:
        block_rows = max(128, (1 << (21 if features.device.type == "cpu" else 27)) // weight.shape[0])
    if torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(features, weight, labels, soft_cap, reduction, block_rows)
    # evaluation (no_grad, inference_mode): the loss alone, no gradient work
    return _blockwise_loss(features, weight, labels, soft_cap, reduction, block_rows, False, False)[0]


def answer_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy answers against the labels of the answer tokens (labels not `IGNORE_INDEX`).

    Args:
        logits: (B, S, V); labels: (B, S).

    Returns:
        Correct answer tokens, answer tokens, and sequences whose answers are all correct (scalars, int64).
    """
    scored = labels != IGNORE_INDEX
    wrong = (logits.argmax(-1) != labels) & scored  # (B, S)
    return (scored.sum() - wrong.sum()), scored.sum(), (~wrong.any(-1)).sum()
