"""`xlstm-explain lstm|slstm|mlstm`: the hand walk-through the project grew from, computed by our own cells.

    xlstm-explain lstm                    the classic LSTM for three steps (DESIGN.md §7: c1 ≈ [0.8, -1])
    xlstm-explain slstm --x 0,1,100       sLSTM's exponential gates with the stabilizer m, and without it
    xlstm-explain mlstm                   mLSTM's matrix memory C, normalizer n and read-out h

Two units, h0 = [1, 1], c0 = [0.3, -0.5]; the recurrent weights are chosen so that h0 gives the walk-through's
gate pre-activations (forget [-4, -6], input [6, 4], output [4, -5], candidate [1, -6]), and each step's input
x_t is added to every pre-activation. Every number printed comes from `LSTMCell`, the sLSTM kernel's step or the
mLSTM kernel's step (float64), shown exactly and rounded to one decimal as by hand.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xlstm_lm.kernels.mlstm import mlstm_step
from xlstm_lm.kernels.slstm import slstm_step
from xlstm_lm.models.lstm import LSTMCell

# The walk-through's gate pre-activations from h0 = [1, 1], per gate two units (DESIGN.md §7).
WALK = {"forget": [-4.0, -6.0], "input": [6.0, 4.0], "output": [4.0, -5.0], "candidate": [1.0, -6.0]}
LSTM_ORDER = ("forget", "input", "output", "candidate")  # LSTMCell's gate rows
SLSTM_ORDER = ("input", "forget", "candidate", "output")  # the sLSTM kernel's (i, f, z, o)


def exact(values) -> str:
    return "[" + ", ".join(f"{float(v):.4f}" for v in torch.as_tensor(values).flatten()) + "]"


def rounded(values) -> str:
    """Rounded to one decimal as by hand: 0.7616 -> 0.8, -0.9999 -> -1 (and never "-0")."""
    return "[" + ", ".join(f"{round(float(v), 1) + 0.0:g}" for v in torch.as_tensor(values).flatten()) + "]"


def both(values) -> str:
    return f"{exact(values)} ≈ {rounded(values)}"


def walk_weights(order: Sequence[str]) -> torch.Tensor:
    """(4·2, 2) recurrent weights U with U h0 = the walk-through's pre-activations for h0 = [1, 1] (gate rows in
    `order`): each column holds half of them."""
    pre = torch.tensor([WALK[gate] for gate in order], dtype=torch.float64).flatten()  # (8,)
    return torch.stack([pre / 2, pre / 2], dim=1)


def lstm_walk(xs: Sequence[float], h0: Sequence[float], c0: Sequence[float]) -> list[dict[str, torch.Tensor]]:
    """The classic LSTM cell (`LSTMCell`) step by step: per step the pre-activations, gates, c and h."""
    cell = LSTMCell(input_size=1, hidden_size=2).double()
    with torch.no_grad():
        cell.input_weight.fill_(1.0)  # x_t is added to every pre-activation
        cell.recurrent_weight.copy_(walk_weights(LSTM_ORDER))
        cell.bias.zero_()
    h, c = torch.tensor([h0], dtype=torch.float64), torch.tensor([c0], dtype=torch.float64)
    steps = []
    for x in xs:
        x_t = torch.tensor([[x]], dtype=torch.float64)
        with torch.no_grad():
            pre = (x_t @ cell.input_weight.T + h @ cell.recurrent_weight.T + cell.bias)[0].view(4, 2)
            h, c = cell(x_t, (h, c))
        forget, input_, output, candidate = pre
        steps.append({"x": x_t[0], "pre": pre, "forget": torch.sigmoid(forget), "input": torch.sigmoid(input_),
                      "output": torch.sigmoid(output), "candidate": torch.tanh(candidate), "c": c[0], "h": h[0]})
    return steps


def print_step_header(t: int, step: dict[str, torch.Tensor], order: Sequence[str]) -> None:
    """The step's input and its gate pre-activations (`step["pre"]`, gate rows in `order`), in the walk's order."""
    pre = dict(zip(order, step["pre"]))
    print(f"\nstep {t}: x{t} = {float(step['x']):g}")
    print("  pre-activations  " + "  ".join(f"{gate} {rounded(pre[gate])}" for gate in LSTM_ORDER))


def print_lstm(steps: list[dict[str, torch.Tensor]], h0, c0) -> None:
    print("Classic LSTM: c_t = σ(f̃)·c_{t-1} + σ(ĩ)·tanh(z̃),  h_t = σ(õ)·tanh(c_t)")
    print(f"h0 = {rounded(h0)}, c0 = {rounded(c0)}")
    for t, step in enumerate(steps, 1):
        print_step_header(t, step, LSTM_ORDER)
        rows = [("forget gate     σ(f̃)   ", "forget"), ("input gate      σ(ĩ)   ", "input"),
                ("output gate     σ(õ)   ", "output"), ("candidate       tanh(z̃)", "candidate"),
                (f"c{t} = σ(f̃)·c{t - 1} + σ(ĩ)·tanh(z̃)", "c"), (f"h{t} = σ(õ)·tanh(c{t})         ", "h")]
        print("\n".join(f"  {label} = {both(step[key])}" for label, key in rows))


def slstm_walk(xs: Sequence[float], h0: Sequence[float], c0: Sequence[float]) -> list[dict[str, torch.Tensor]]:
    """The sLSTM kernel's step (`slstm_step`, one head of two units) from y0 = h0, c0, n0 = 1, m0 = 0, with the
    LSTM walk's recurrent weights; per step also the unstabilized update in float32 (exp(ĩ) as it is)."""
    R = walk_weights(SLSTM_ORDER).view(4, 2, 2).transpose(1, 2)[:, None]  # (4, NH=1, DH in, DH out)
    b = torch.zeros(4, 1, 2, dtype=torch.float64)
    state = (torch.tensor([[h0]], dtype=torch.float64), torch.tensor([[c0]], dtype=torch.float64),
             torch.ones(1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, 2, dtype=torch.float64))
    plain = (state[1][0, 0].float(), state[2][0, 0].float())  # c, n without the stabilizer, float32
    steps = []
    for x in xs:
        y_prev, _, _, m_prev = state
        gates_x = torch.full((1, 4, 1, 2), float(x), dtype=torch.float64)
        pre = gates_x[0, :, 0] + torch.einsum("d,gde->ge", y_prev[0, 0], R[:, 0]) + b[:, 0]  # (4, DH): i, f, z, o
        y, state = slstm_step(gates_x, R, b, state, backend="native")
        igate, fgate, zgate, ogate = pre
        m = state[3][0, 0]
        pre32 = pre.float()
        c_plain = torch.sigmoid(pre32[1]) * plain[0] + torch.exp(pre32[0]) * torch.tanh(pre32[2])
        n_plain = torch.sigmoid(pre32[1]) * plain[1] + torch.exp(pre32[0])
        plain = (c_plain, n_plain)
        steps.append({"x": torch.tensor(float(x)), "pre": pre, "m": m,
                      "i": torch.exp(igate - m), "f": torch.exp(F.logsigmoid(fgate) + m_prev[0, 0] - m),
                      "z": torch.tanh(zgate), "o": torch.sigmoid(ogate),
                      "c": state[1][0, 0], "n": state[2][0, 0], "y": y[0, 0],
                      "exp_i": torch.exp(pre32[0]), "c_plain": c_plain, "n_plain": n_plain,
                      "y_plain": torch.sigmoid(pre32[3]) * c_plain / n_plain})
    return steps


def print_slstm(steps: list[dict[str, torch.Tensor]], h0, c0) -> None:
    print("sLSTM: exponential input gate exp(ĩ), normalizer n, stabilizer m (DESIGN.md §5)")
    print("  m_t = max(logσ(f̃) + m_{t-1}, ĩ),  i = exp(ĩ - m_t),  f = exp(logσ(f̃) + m_{t-1} - m_t)")
    print("  c_t = f·c_{t-1} + i·tanh(z̃),  n_t = f·n_{t-1} + i,  y_t = σ(õ)·c_t/n_t")
    print(f"y0 = {rounded(h0)}, c0 = {rounded(c0)}, n0 = [1, 1], m0 = [0, 0]")
    for t, step in enumerate(steps, 1):
        print_step_header(t, step, SLSTM_ORDER)
        print(f"  stabilizer      m{t}    = {both(step['m'])}")
        print(f"  input gate      i      = {both(step['i'])}   (exp(ĩ - m{t}): at most 1)")
        print(f"  forget gate     f      = {both(step['f'])}")
        print(f"  candidate       tanh(z̃) = {both(step['z'])},  output σ(õ) = {both(step['o'])}")
        print(f"  c{t} = {both(step['c'])},  n{t} = {both(step['n'])}   (stabilized: scaled by exp(-m{t}))")
        print(f"  y{t} = σ(õ)·c{t}/n{t} = {both(step['y'])}")
        print(f"  without m (float32): exp(ĩ) = {exact(step['exp_i'])}, c = {exact(step['c_plain'])}, "
              f"n = {exact(step['n_plain'])}, y = {exact(step['y_plain'])}")
    print("\nm cancels in c/n, so y is the same with and without it, until exp(ĩ) overflows (float32 beyond "
          f"ĩ ≈ {math.log(torch.finfo(torch.float32).max):.1f}): then c and n are inf and y is nan. Try --x 0,1,100.")


def vectors(text: str) -> list[list[float]]:
    """"1,0;0,1" -> [[1, 0], [0, 1]]."""
    return [[float(v) for v in item.split(",")] for item in text.split(";")]


def mlstm_walk(keys, values, queries, igates, fgates) -> list[dict[str, torch.Tensor]]:
    """The mLSTM kernel's step (`mlstm_step`, one head, DQK = DV = 2) from a zero memory."""
    state, steps = None, []
    for k, v, q, i, f in zip(keys, values, queries, igates, fgates):
        args = [torch.tensor([[vector]], dtype=torch.float64) for vector in (q, k, v)]
        gates = [torch.tensor([[gate]], dtype=torch.float64) for gate in (i, f)]
        h, state = mlstm_step(*args, *gates, state, backend="native")
        C, n, m = (x[0, 0] for x in state)
        steps.append({"k": args[1][0, 0], "v": args[2][0, 0], "q": args[0][0, 0], "i": gates[0][0, 0],
                      "f": gates[1][0, 0], "C": C, "n": n, "m": m, "h": h[0, 0]})
    return steps


def print_mlstm(steps: list[dict[str, torch.Tensor]]) -> None:
    print("mLSTM: a matrix memory C written with k·vᵀ, read with q (DESIGN.md §4); no recurrent weights")
    print("  C_t = σ(f̃)·C_{t-1} + exp(ĩ)·k_t v_tᵀ,  n_t = σ(f̃)·n_{t-1} + exp(ĩ)·k_t,  q̂ = q/√DQK")
    print("  h_t = q̂ᵀC_t / max(|q̂ᵀn_t|, 1)   (stored stabilized: C, n scaled by exp(-m), m as in sLSTM)")
    for t, step in enumerate(steps, 1):
        scale = torch.exp(step["m"])
        print(f"\nstep {t}: k = {rounded(step['k'])}, v = {rounded(step['v'])}, q = {rounded(step['q'])}, "
              f"ĩ = {float(step['i']):g}, f̃ = {float(step['f']):g}")
        print(f"  m{t} = {float(step['m']):.4f};  memory C{t} = exp(m)·stored = rows {exact((scale * step['C'])[0])}, "
              f"{exact((scale * step['C'])[1])}")
        print(f"  normalizer n{t} = {both(scale * step['n'])}")
        print(f"  read-out h{t} = q̂ᵀC/max(|q̂ᵀn|, 1) = {both(step['h'])}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xlstm-explain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", choices=("lstm", "slstm", "mlstm"))
    parser.add_argument("--x", default="0,1,-1", help="lstm/slstm: the input x_t of each step, added to every "
                        "gate pre-activation (default 0,1,-1: step 1 is the walk-through)")
    parser.add_argument("--h0", default="1,1", help="lstm/slstm: the initial output h0 (y0)")
    parser.add_argument("--c0", default="0.3,-0.5", help="lstm/slstm: the initial cell state")
    parser.add_argument("--keys", default="1,0;0,1;0,0", help="mlstm: k_t per step, 'a,b;c,d;...'")
    parser.add_argument("--values", default="0.8,-1;0.3,-0.5;0,0", help="mlstm: v_t per step")
    parser.add_argument("--queries", default="1.4142,0;0,1.4142;1.4142,0", help="mlstm: q_t per step")
    parser.add_argument("--igate", default="0,0,-10", help="mlstm: input gate pre-activation ĩ_t per step")
    parser.add_argument("--fgate", default="4,4,4", help="mlstm: forget gate pre-activation f̃_t per step")
    args = parser.parse_args(argv)
    if args.cell == "mlstm":
        keys, values, queries = vectors(args.keys), vectors(args.values), vectors(args.queries)
        igates, fgates = vectors(args.igate)[0], vectors(args.fgate)[0]
        if len({len(keys), len(values), len(queries), len(igates), len(fgates)}) != 1:
            parser.error("--keys, --values, --queries, --igate and --fgate need one entry per step each")
        print_mlstm(mlstm_walk(keys, values, queries, igates, fgates))
        return
    xs, h0, c0 = vectors(args.x)[0], vectors(args.h0)[0], vectors(args.c0)[0]
    if len(h0) != 2 or len(c0) != 2:
        parser.error("--h0 and --c0 take two units, e.g. --h0 1,1")
    if args.cell == "lstm":
        print_lstm(lstm_walk(xs, h0, c0), h0, c0)
    else:
        print_slstm(slstm_walk(xs, h0, c0), h0, c0)


if __name__ == "__main__":
    main(sys.argv[1:])
