"""Model FLOPs per token and model FLOPs utilization (DESIGN.md §11), written once for every model.

Forward FLOPs per token:
    dense    2 · (parameters of the matrices every token multiplies: projections, block-diagonal maps,
             depthwise convolutions, FFNs and the LM head; not the embedding lookup, not sLSTM's R, not
             Mamba's A_log)
    mLSTM    per block and head, chunkwise with chunk L:  L · (DQK + DV) + 4 · DQK · DV
    sLSTM    per block and head:  8 · DH²  (four gates times the DH x DH recurrent matrix)
    Mamba    per layer, the selective scan: 9 · E · N  (exp(Δ A), Δ B x, the state update and C · h for each of
             the E · N states; the count of mamba_ssm's reference)
    attention per Transformer layer: 2 · S · D  (QKᵀ and PV, causal: half of the 4 · S · D of a full square)
Training counts 3x the forward (the backward is about twice the forward). MFU divides by the device's
peak at the precision the run computes in, from Lightning's table (`get_available_flops`).
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.throughput import get_available_flops

from xlstm_lm.models import LanguageModel, LlamaLM
from xlstm_lm.models.mamba import MambaMixer
from xlstm_lm.models.mlstm import MLSTMLayer
from xlstm_lm.models.xlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMLayer

# The dtype the matmuls of each Lightning precision run in, whose peak MFU divides by.
COMPUTE_DTYPES = {"64-true": torch.float64, "32-true": torch.float32, "16-mixed": torch.float16,
                  "16-true": torch.float16, "bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16}
# Dense FLOP/s of an H200 (the H100 SXM's compute, vendor figures without sparsity). Note: Lightning's table
# names the H200 only as "h200 sxm1"/"h200 nvl1", which no device reports ("NVIDIA H200", "NVIDIA H200 NVL"),
# so it finds nothing for one; and those entries hold the figures with sparsity.
H200_FLOPS = {torch.float64: 33.5e12, torch.float32: 66.9e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12,
              torch.float16: 989.4e12}


def dense_matrix_parameters(model: LanguageModel) -> int:
    """Parameters that each token multiplies once: every weight matrix but the embedding, sLSTM's R and Mamba's
    A_log (the scan's, counted in `cell_flops_per_token`)."""
    skip = {id(model.embedding.weight)} - {id(model.head.weight)}  # a tied head is still a matmul
    skip |= {id(layer.recurrent) for layer in model.modules() if isinstance(layer, SLSTMLayer)}
    skip |= {id(mixer.A_log) for mixer in model.modules() if isinstance(mixer, MambaMixer)}
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
        elif isinstance(module, MambaMixer):
            flops += 9 * module.inner * module.state_size
    if isinstance(model, LlamaLM):
        flops += len(model.layers) * 2 * context_length * model.config.embedding_dim
    return flops


def forward_flops_per_token(model: LanguageModel, context_length: int) -> float:
    """Forward FLOPs per token of `model` on windows of `context_length` tokens."""
    return 2.0 * dense_matrix_parameters(model) + cell_flops_per_token(model, context_length)


def training_flops_per_token(model: LanguageModel, context_length: int) -> float:
    """Forward plus backward, counted as 3x the forward."""
    return 3.0 * forward_flops_per_token(model, context_length)


def peak_flops(device: torch.device, dtype: torch.dtype | None, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one `device` computing in `dtype`: the override, else Lightning's table (float32 counts as
    TF32 when matmuls may use it), else None (a CPU, an unknown GPU or dtype)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda" and "H200" in torch.cuda.get_device_name(device):
        if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
            dtype = "tfloat32"
        return H200_FLOPS.get(dtype)
    return get_available_flops(device, dtype) if dtype is not None else None
