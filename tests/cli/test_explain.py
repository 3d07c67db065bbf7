"""`xlstm-explain`: the printed walk-throughs are our cells' numbers, and the LSTM's is the seed's (DESIGN.md §7)."""

import torch

from xlstm_lm.cli import explain
from xlstm_lm.models import LSTMCell


def test_lstm_walk_prints_the_cells_numbers_and_the_hand_rounded_c1(capsys):
    explain.main(["lstm", "--x", "0,0.5,-2"])
    out = capsys.readouterr().out
    # the cell alone, weights set as the walk-through says: U h0 gives the pre-activations, x adds to each
    cell = LSTMCell(1, 2).double()
    pre = torch.tensor([-4.0, -6.0, 6.0, 4.0, 4.0, -5.0, 1.0, -6.0], dtype=torch.float64)
    with torch.no_grad():
        cell.input_weight.fill_(1.0)
        cell.recurrent_weight.copy_(torch.stack([pre / 2, pre / 2], dim=1))
        cell.bias.zero_()
        h, c = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[0.3, -0.5]], dtype=torch.float64)
        for t, x in enumerate([0.0, 0.5, -2.0], 1):
            h, c = cell(torch.tensor([[x]], dtype=torch.float64), (h, c))
            assert f"c{t} = σ(f̃)·c{t - 1} + σ(ĩ)·tanh(z̃) = {explain.both(c)}" in out
            assert f"h{t} = σ(õ)·tanh(c{t})          = {explain.both(h)}" in out
    assert "c1 = σ(f̃)·c0 + σ(ĩ)·tanh(z̃) = [0.7651, -0.9832] ≈ [0.8, -1]" in out
    assert "forget [-4, -6]  input [6, 4]  output [4, -5]  candidate [1, -6]" in out
    assert "σ(f̃)    = [0.0180, 0.0025] ≈ [0, 0]" in out and "tanh(z̃) = [0.7616, -1.0000] ≈ [0.8, -1]" in out


def test_slstm_walk_is_the_kernels_and_shows_the_overflow_without_the_stabilizer(capsys):
    steps = explain.slstm_walk([0.0, 100.0], [1.0, 1.0], [0.3, -0.5])
    explain.main(["slstm", "--x", "0,100"])
    out = capsys.readouterr().out
    for t, step in enumerate(steps, 1):
        assert f"y{t} = σ(õ)·c{t}/n{t} = {explain.both(step['y'])}" in out
        assert f"m{t}    = {explain.both(step['m'])}" in out
    # step 1 is the LSTM's walk with exponential gates, computed here by hand from DESIGN.md §5: m1 = ĩ
    f64 = dict(dtype=torch.float64)
    i_pre, f_pre = torch.tensor([6.0, 4.0], **f64), torch.tensor([-4.0, -6.0], **f64)
    m1 = torch.maximum(torch.nn.functional.logsigmoid(f_pre), i_pre)
    i, f = torch.exp(i_pre - m1), torch.exp(torch.nn.functional.logsigmoid(f_pre) - m1)
    c1 = f * torch.tensor([0.3, -0.5], **f64) + i * torch.tanh(torch.tensor([1.0, -6.0], **f64))
    torch.testing.assert_close(steps[0]["m"], m1)
    torch.testing.assert_close(steps[0]["y"], torch.sigmoid(torch.tensor([4.0, -5.0], **f64)) * c1 / (f + i))
    torch.testing.assert_close(steps[0]["y_plain"], steps[0]["y"].float())  # m cancels while nothing overflows
    assert torch.isfinite(steps[1]["y"]).all() and torch.isnan(steps[1]["y_plain"]).all()
    assert "y = [nan, nan]" in out


def test_mlstm_walk_reads_back_the_stored_value(capsys):
    explain.main(["mlstm"])
    out = capsys.readouterr().out
    steps = explain.mlstm_walk([[1, 0], [0, 1], [0, 0]], [[0.8, -1], [0.3, -0.5], [0, 0]],
                               [[1.4142, 0], [0, 1.4142], [1.4142, 0]], [0, 0, -10], [4, 4, 4])
    for t, step in enumerate(steps, 1):
        assert f"read-out h{t} = q̂ᵀC/max(|q̂ᵀn|, 1) = {explain.both(step['h'])}" in out
    assert "read-out h3 = q̂ᵀC/max(|q̂ᵀn|, 1) = [0.7715, -0.9643] ≈ [0.8, -1]" in out  # v1 after two forgets
    torch.testing.assert_close(steps[0]["C"], torch.tensor([[0.8, -1.0], [0.0, 0.0]], dtype=torch.float64))
