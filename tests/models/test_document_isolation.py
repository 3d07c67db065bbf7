"""Packed documents are exactly separate in every model that takes `doc_starts` (issue #16).

Every block type (paper mLSTM, sLSTM, both in an xLSTM[1:1] stack, the 7B-style mLSTM block, the
Transformer baseline) gets random non-zero weights everywhere, sLSTM R ~ N(0, 0.3²) included (at init R = 0
and the previous document could only leak through the cell state), with gate pre-activations in the
realistic range of the init or pushed to the extreme one (gate weights and biases scaled by 10). The logits
of a packed window must equal, to float64 rounding, those of each document run alone (from the carried
state where a row continues one), and no gradient may reach another document. The chunk length 16 puts
document starts at a chunk boundary (16), mid-chunk (21) and at 0, in a window that is no multiple of it.
"""

import pytest
import torch

from xlstm_lm.models import build_model

S = 37
STARTS = ((0, 16, 21), (5, 30))  # per row; row 1's first document continues the state it is given
LOSS_SPAN = (21, 37)  # row 0's document whose loss must reach no other: it starts mid-chunk, spans two
COMMON = dict(vocab_size=61, embedding_dim=32, num_heads=4)
MODELS = {
    "mlstm": dict(architecture="xlstm", ratio="1:0", num_blocks=1, chunk_size=16),
    "slstm": dict(architecture="xlstm", ratio="0:1", num_blocks=1),
    "xlstm[1:1]": dict(architecture="xlstm", ratio="1:1", num_blocks=2, chunk_size=16),
    "xlstm_large": dict(architecture="xlstm_large", num_blocks=1, chunk_size=16),
    "llama": dict(architecture="llama", num_blocks=4),
}
GATES = ("igate", "fgate", "gate_inputs.0", "gate_inputs.1")  # the mLSTM gates and sLSTM's i, f projections


def random_model(name: str, regime: str) -> torch.nn.Module:
    """A float64 model with every parameter perturbed; "extreme" scales the gates by 10."""
    torch.manual_seed(0)
    model = build_model({**COMMON, **MODELS[name]}).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
            if param_name.endswith("recurrent"):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
            if regime == "extreme" and any(f".{gate}." in param_name for gate in GATES):
                param.mul_(10.0)
    return model


def doc_starts() -> torch.Tensor:
    flags = torch.zeros(len(STARTS), S, dtype=torch.bool)
    for row, starts in enumerate(STARTS):
        flags[row, list(starts)] = True
    return flags


def row_state(state, row: int):
    """The carried state of one batch row (every block's tensors are batch-first)."""
    return [tuple(x[row:row + 1] for x in block) for block in state]


def largest_difference(model, ids: torch.Tensor, state=None) -> float:
    """max |packed - alone| over the logits of every document, relative to the largest logit."""
    logits = model(ids, state=state, doc_starts=doc_starts())
    worst = 0.0
    for row, starts in enumerate(STARTS):
        bounds = sorted({0, *starts, S})
        for a, e in zip(bounds[:-1], bounds[1:]):
            continues = a == 0 and 0 not in starts and state is not None
            alone = model(ids[row:row + 1, a:e], state=row_state(state, row) if continues else None)
            worst = max(worst, (logits[row:row + 1, a:e] - alone).abs().max().item())
    return worst / logits.abs().max().item()


@pytest.mark.parametrize(
    "name, regime",
    [(name, "realistic") for name in MODELS] + [("xlstm[1:1]", "extreme"), ("xlstm_large", "extreme")],
)
def test_packed_logits_equal_separate_documents(name, regime):
    model = random_model(name, regime)
    ids = torch.randint(0, 61, (2, S), generator=torch.Generator().manual_seed(2))
    assert largest_difference(model, ids) < 1e-12
    # no gradient crosses a start: the loss of one document reaches only its own embeddings
    embedded = {}
    hook = model.embedding.register_forward_hook(lambda module, args, out: embedded.setdefault("x", out))
    logits = model(ids, doc_starts=doc_starts())
    hook.remove()
    embedded["x"].retain_grad()
    logits[0, slice(*LOSS_SPAN)].pow(2).sum().backward()
    grad = embedded["x"].grad
    assert grad[0, slice(*LOSS_SPAN)].abs().max() > 0
    grad[0, slice(*LOSS_SPAN)] = 0.0
    assert grad.eq(0).all(), f"largest gradient outside the document {grad.abs().max().item():.1e}"


@pytest.mark.parametrize("name", ["xlstm[1:1]", "xlstm_large"])
def test_a_carried_state_is_dropped_at_a_document_start(name):
    """Stateful training passes the state of the previous window: a row that starts a document at 0 must
    forget it (cells and convolution), a row that continues one must keep it."""
    model = random_model(name, "realistic")
    generator = torch.Generator().manual_seed(3)
    _, state = model(torch.randint(0, 61, (2, 9), generator=generator), return_state=True)
    ids = torch.randint(0, 61, (2, S), generator=generator)
    assert largest_difference(model, ids, state) < 1e-12
