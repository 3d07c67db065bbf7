"""The xLSTM language models (the paper stack and the 7B-style stack): sizes, sLSTM placement, state passing,
generation steps, document resets."""

import logging

import pytest
import torch

from xlstm_lm.models import XLSTMConfig, XLSTMLargeConfig, build_model, place_slstm_blocks

TINY = dict(vocab_size=97, embedding_dim=32, num_blocks=4, num_heads=4, chunk_size=8)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_model({"architecture": "xlstm", **TINY, **overrides}).double()


@pytest.mark.parametrize(
    "size,arch,dim,blocks,heads,vocab,nominal",
    [
        ("125m", "xlstm", 768, 24, 4, 50304, 125e6),
        ("350m", "xlstm", 1024, 48, 4, 50304, 350e6),
        ("760m", "xlstm", 1536, 48, 4, 50304, 760e6),
        ("1.3b", "xlstm", 2048, 48, 4, 50304, 1.3e9),
        ("7b", "xlstm_large", 4096, 32, 8, 50304, 7e9),
    ],
)
def test_paper_sizes_land_within_ten_percent_of_their_names(size, arch, dim, blocks, heads, vocab, nominal):
    """Names count parameters without the input embedding table (the head is counted)."""
    config = dict(architecture=arch, embedding_dim=dim, num_blocks=blocks, num_heads=heads, vocab_size=vocab)
    with torch.device("meta"):
        model = build_model(config if arch == "xlstm_large" else {**config, "ratio": "7:1"})
    count = model.num_parameters(exclude_embedding=True)
    assert abs(count - nominal) / nominal < 0.10, f"{size}: {count / 1e6:.1f}M"
    if arch == "xlstm_large":
        assert abs(model.num_parameters() - nominal) / nominal < 0.10


def test_slstm_positions():
    assert XLSTMConfig(num_blocks=24).slstm_positions == [3, 20]
    assert XLSTMConfig(num_blocks=48).slstm_positions == [3, 5, 7, 40, 42, 44]
    assert XLSTMConfig(num_blocks=8, ratio="7:1").slstm_positions == [4]
    assert XLSTMConfig(num_blocks=8, ratio="1:1").slstm_positions == [1, 3, 5, 7]
    assert XLSTMConfig(num_blocks=8, ratio="1:0").slstm_positions == []
    assert XLSTMConfig(num_blocks=8, ratio="0:1").slstm_positions == list(range(8))
    assert XLSTMConfig(num_blocks=8, slstm_at=[1, 6]).slstm_positions == [1, 6]
    assert place_slstm_blocks(2, 7, 1) == [1]  # at least one sLSTM block and one mLSTM block


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(embedding_dim=30, num_heads=4), "does not divide"),
        (dict(ratio="7-1"), "ratio"),
        (dict(slstm_at=[0, 9]), "slstm_at"),
        (dict(architecture="transformer"), "architecture"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        XLSTMConfig(**{**TINY, **overrides})


def test_block_types_follow_the_config():
    model = tiny_model(ratio="1:1")
    assert [type(b).__name__ for b in model.blocks] == ["MLSTMBlock", "SLSTMBlock", "MLSTMBlock", "SLSTMBlock"]
    large = tiny_model(architecture="xlstm_large")
    assert {type(b).__name__ for b in large.blocks} == {"LargeMLSTMBlock"}


ARCHITECTURES = [dict(ratio="1:1"), dict(architecture="xlstm_large")]
# float32 logits rounded from float64 values that agree to ~1e-14 differ by at most one ulp
FLOAT32_ULP = dict(rtol=2**-23, atol=0.0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_in_pieces_and_token_by_token_equals_one_pass(arch):
    model = tiny_model(**arch)
    ids = torch.randint(0, 97, (2, 21))
    full, full_state = model(ids, return_state=True)
    assert full.shape == (2, 21, 97) and full.dtype == torch.float32
    pieces, state = [], None
    for piece in ids.split([9, 1, 11], dim=1):
        logits, state = model(piece, state=state, return_state=True)
        pieces.append(logits)
    # float64 inside: the states agree to float64 rounding (~1e-14 seen), the float32 logits to one ulp
    torch.testing.assert_close(torch.cat(pieces, 1), full, **FLOAT32_ULP)
    for block_full, block_pieces in zip(full_state, state):
        for a, b in zip(block_full, block_pieces):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for one_token in (lambda x, state: model(x, state=state, return_state=True), model.decode_step):
        steps, state = [], None  # the sequence form at S = 1, then the cells' step functions (generation)
        for t in range(ids.shape[1]):
            logits, state = one_token(ids[:, t:t + 1], state)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, **FLOAT32_ULP)


def test_doc_starts_reset_the_mlstm_memory():
    """After a document start, an mLSTM-only stack's outputs no longer depend on the earlier document."""
    model = tiny_model(ratio="1:0")
    with torch.no_grad():  # make the memory matter: long forget, strong input
        for block in model.blocks:
            block.layer.fgate.bias.fill_(8.0)
    second_doc = torch.randint(0, 97, (1, 10))
    a = torch.cat([torch.randint(0, 97, (1, 7)), second_doc], 1)
    b = torch.cat([torch.randint(0, 97, (1, 7)), second_doc], 1)
    starts = torch.zeros(1, 17, dtype=torch.bool)
    starts[0, 7] = True
    out_a, out_b = model(a, doc_starts=starts)[:, 7:], model(b, doc_starts=starts)[:, 7:]
    torch.testing.assert_close(out_a, out_b, rtol=1e-8, atol=1e-8)
    assert not torch.allclose(model(a)[:, 7:], model(b)[:, 7:], atol=1e-4)  # without the flags they differ


def test_gradients_reach_every_parameter():
    model = tiny_model(ratio="1:1")
    model.blocks[1].layer.recurrent.data.normal_(std=0.1)  # R starts at zero; give it a path
    logits = model(torch.randint(0, 97, (2, 12)))
    logits.logsumexp(-1).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_tied_embeddings_share_the_matrix():
    model = tiny_model(tie_embeddings=True)
    assert model.head.weight is model.embedding.weight
    assert model.num_parameters() == tiny_model().num_parameters() - 97 * 32


def test_state_must_match_the_number_of_blocks():
    model = tiny_model()
    with pytest.raises(ValueError, match="blocks"):
        model(torch.zeros(1, 3, dtype=torch.long), state=[None])


def test_backend_must_exist_for_every_cell_of_the_stack():
    assert XLSTMConfig(**{**TINY, "ratio": "1:0", "backend": "reference"}).backend == "reference"
    with pytest.raises(ValueError, match=r"model.backend='reference' is not one of \['auto', 'native', 'triton'\]"):
        XLSTMConfig(**{**TINY, "ratio": "1:1", "backend": "reference"})
    with pytest.raises(ValueError, match="model.backend='cuda'"):
        XLSTMConfig(**{**TINY, "backend": "cuda"})
    assert XLSTMLargeConfig(**{**TINY, "backend": "reference"}).backend == "reference"
    with pytest.raises(ValueError, match="model.backend='cuda'"):
        XLSTMLargeConfig(**{**TINY, "backend": "cuda"})


def test_each_stack_refuses_the_other_ones_architecture_and_settings():
    with pytest.raises(ValueError, match="must be 'xlstm_large'"):
        XLSTMLargeConfig(architecture="xlstm")
    with pytest.raises(TypeError, match="ratio"):
        XLSTMLargeConfig(**TINY, ratio="1:0")
    with pytest.raises(TypeError, match="gate_soft_cap"):
        XLSTMConfig(**TINY, gate_soft_cap=15.0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_stack_compiles_without_graph_breaks(arch):
    # trainer.compile=true compiles the whole model: a graph break would split it and fall back to eager
    # between the pieces (torch._dynamo.explain traces without generating code, in seconds).
    model = tiny_model(**arch)
    ids = torch.randint(0, 97, (2, 16))
    for kwargs in ({}, {"labels": ids}):
        explanation = torch._dynamo.explain(model)(ids, **kwargs)
        assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]


def test_the_backend_is_resolved_once_for_the_stack_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="xlstm_lm.models.base"):
        model = tiny_model(ratio="1:1")
    mlstm_layers = [block.layer for block in model.blocks if type(block).__name__ == "MLSTMBlock"]
    assert mlstm_layers[0].backend is mlstm_layers[1].backend and mlstm_layers[0].backend.name == "auto"
    assert ("mLSTM backend auto: native (chunkwise PyTorch) on cpu, cuda float64; "
            "triton (fused chunkwise Triton kernels) on cuda float32/bfloat16/float16") in caplog.text
    assert "sLSTM backend auto: native (a PyTorch step loop" in caplog.text


def test_the_large_blocks_constants_follow_its_config():
    model = tiny_model(architecture="xlstm_large")
    block = model.blocks[0]
    # NX-AI's defaults: every norm (the per-head one included) at 1e-6, the mLSTM normalizer at 1e-6
    assert {block.norm.eps, block.ffn_norm.eps, block.head_norm.eps, model.final_norm.eps, block.cell_eps} == {1e-6}
    block = tiny_model(architecture="xlstm_large", norm_eps=1e-4, head_norm_eps=1e-3, cell_eps=1e-2,
                       ffn_multiple_of=16, ffn_factor=1.0).blocks[0]
    assert (block.norm.eps, block.ffn_norm.eps, block.head_norm.eps, block.cell_eps) == (1e-4, 1e-4, 1e-3, 1e-2)
    assert block.ffn.down.in_features == 32  # 1.0 * 32 rounded up to 16
