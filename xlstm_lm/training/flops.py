"""Model FLOPs per token and model FLOPs utilization (DESIGN.md §11), written once for every model.

Forward FLOPs per token:
    dense    2 · (parameters of the matrices every token multiplies: projections, block-diagonal maps,
             depthwise convolutions, FFNs and the LM head; not the embedding lookup, not sLSTM's R)
    mLSTM    per block and head, chunkwise with chunk L:  L · (DQK + DV) + 4 · DQK · DV
    sLSTM    per block and head:  8 · DH²  (four gates times the DH x DH recurrent matrix)
    attention per Transformer layer: 2 · S · D  (QKᵀ and PV, causal: half of the 4 · S · D of a full square)
Training counts 3x the forward (the backward is about twice the forward).
"""

from __future__ import annotations

from xlstm_lm.models import LanguageModel, LlamaLM
from xlstm_lm.models.mlstm import MLSTMLayer
from xlstm_lm.models.xlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMLayer

# Dense bf16 peak of common accelerators, TFLOP/s (vendor figures without sparsity), by device name part.
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}


def dense_matrix_parameters(model: LanguageModel) -> int:
    """Parameters that each token multiplies once: every weight matrix but the embedding and sLSTM's R."""
    skip = {id(model.embedding.weight)} - {id(model.head.weight)}  # a tied head is still a matmul
    skip |= {id(layer.recurrent) for layer in model.modules() if isinstance(layer, SLSTMLayer)}
    return sum(p.numel() for name, p in model.named_parameters()
               if p.ndim >= 2 and not name.endswith("bias") and id(p) not in skip)


def cell_flops_per_token(model: LanguageModel, context_length: int) -> float:
    """The sequence-mixing FLOPs per token that no weight count captures: cells and attention."""
    flops = 0.0
    for module in model.modules():
        if isinstance(module, (MLSTMLayer, LargeMLSTMBlock)):
            heads = module.num_heads
            dqk = module.q.out_features // heads
            dv = module.v.out_features // heads
            chunk = min(module.chunk_size, context_length)
            flops += heads * (chunk * (dqk + dv) + 4 * dqk * dv)
        elif isinstance(module, SLSTMLayer):
            flops += module.num_heads * 8 * module.head_dim**2
    if isinstance(model, LlamaLM):
        flops += len(model.layers) * 2 * context_length * model.config.embedding_dim
    return flops


def forward_flops_per_token(model: LanguageModel, context_length: int) -> float:
    """Forward FLOPs per token of `model` on windows of `context_length` tokens."""
    return 2.0 * dense_matrix_parameters(model) + cell_flops_per_token(model, context_length)


def training_flops_per_token(model: LanguageModel, context_length: int) -> float:
    """Forward plus backward, counted as 3x the forward."""
    return 3.0 * forward_flops_per_token(model, context_length)


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s: the override, else the table entry whose key is in the device name, else None."""
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None

