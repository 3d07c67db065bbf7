"""The classic LSTM cell reproduces the walk-through of DESIGN.md §7."""

import torch

from xlstm_lm.models import LSTMCell


def test_lstm_cell_walk_through():
    cell = LSTMCell(input_size=3, hidden_size=2).double()
    h0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    c0 = torch.tensor([[0.3, -0.5]], dtype=torch.float64)
    # pre-activations (forget, input, output, candidate) produced by the recurrent weights from h0 = [1, 1]
    pre = torch.tensor([-4.0, -6.0, 6.0, 4.0, 4.0, -5.0, 1.0, -6.0], dtype=torch.float64)
    with torch.no_grad():
        cell.input_weight.zero_()
        cell.bias.zero_()
        cell.recurrent_weight.copy_(torch.stack([pre / 2, pre / 2], dim=1))
    h1, c1 = cell(torch.randn(1, 3, dtype=torch.float64), (h0, c0))

    s = torch.sigmoid
    f, i, o, z = pre.view(4, 2)
    expected_c1 = c0[0] * s(f) + torch.tanh(z) * s(i)
    torch.testing.assert_close(c1[0], expected_c1)
    torch.testing.assert_close(h1[0], torch.tanh(expected_c1) * s(o))
    # the hand-rounded numbers of the walk-through (they differ in the second decimal, as it says)
    torch.testing.assert_close(c1[0], torch.tensor([0.8, -1.0], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(h1[0], torch.tensor([0.66, 0.0], dtype=torch.float64), atol=0.05, rtol=0)
