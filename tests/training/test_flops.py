"""The FLOP formula of DESIGN §11 against a count by hand on tiny models, and MFU's peak lookup."""

import pytest
import torch
from lightning.fabric.accelerators import cuda as lightning_cuda

from xlstm_lm.models import LlamaConfig, LlamaLM, MambaConfig, MambaLM, XLSTMConfig, XLSTMLM
from xlstm_lm.training.flops import forward_flops_per_token, peak_flops, training_flops_per_token


def test_xlstm_flops_by_hand():
    model = XLSTMLM(XLSTMConfig(vocab_size=64, embedding_dim=16, num_blocks=2, num_heads=4, ratio="1:1", chunk_size=8))
    # block 0, mLSTM (inner 64): up 16x128, conv 64x4, q/k/v 3 x 64x64/16, gates 2 x 192x4, down 64x16
    mlstm_dense = 2048 + 256 + 768 + 1536 + 1024
    # block 1, sLSTM: conv 16x4, four head-wise gate maps 4 x 16x16/4, FFN (hidden 64) 16x128 + 64x16; R apart
    slstm_dense = 64 + 256 + 3072
    head = 16 * 64
    mlstm_cell = 4 * (8 * (16 + 16) + 4 * 16 * 16)  # 4 heads, chunk 8, DQK = DV = 16
    slstm_cell = 4 * 8 * 4**2  # 4 heads of DH 4
    expected = 2 * (mlstm_dense + slstm_dense + head) + mlstm_cell + slstm_cell
    assert forward_flops_per_token(model, context_length=32) == expected == 25728
    assert training_flops_per_token(model, 32) == 3 * expected


def test_transformer_flops_by_hand():
    model = LlamaLM(LlamaConfig(vocab_size=64, embedding_dim=16, num_blocks=4, num_heads=4))
    dense = 2 * (4 * 16 * 16 + 16 * 128 + 64 * 16) + 16 * 64  # two layers (attention + SwiGLU 64) and the head
    attention = 2 * 2 * 32 * 16  # two layers, causal QK and PV at context 32
    assert forward_flops_per_token(model, context_length=32) == 2 * dense + attention


def test_mamba_flops_by_hand():
    model = MambaLM(MambaConfig(vocab_size=64, embedding_dim=16, num_blocks=1))  # E 32, N 16, Δ rank 1
    # in 16x64, conv 32x4, x_proj 32x(1 + 2 * 16), dt_proj 1x32, out 32x16, head 16x64; A_log is no matmul
    dense = 1024 + 128 + 1056 + 32 + 512 + 1024
    scan = 9 * 32 * 16
    assert forward_flops_per_token(model, context_length=32) == 2 * dense + scan == 12160


@pytest.mark.parametrize("name", ["NVIDIA H100 80GB HBM3", "NVIDIA H200"])
def test_peak_flops_by_gpu_name_and_precision_or_override(monkeypatch, name):
    """Lightning's table for the H100, ours for the H200 (which Lightning's misses); float32 counts at the
    float32 (or, when matmuls may use it, TF32) peak, never at the bf16 one."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(lightning_cuda, "_is_ampere_or_later", lambda device=None: True)
    gpu = torch.device("cuda")
    assert peak_flops(gpu, torch.bfloat16) == pytest.approx(989.4e12)
    assert peak_flops(gpu, torch.float32) == pytest.approx(66.9e12)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert peak_flops(gpu, torch.float32) == pytest.approx(494.7e12)
    assert peak_flops(gpu, None) is None  # a precision without a known compute dtype
    assert peak_flops(torch.device("cpu"), torch.float32) is None
    assert peak_flops(torch.device("cpu"), torch.float32, override_tflops=0.21) == pytest.approx(0.21e12)
