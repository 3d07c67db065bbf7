"""Packed documents are exactly separate in every cell backend (DESIGN.md §8, issue #16).

A window holds several documents per row (`Layout`): with S = 37 and chunk length 16, row 0 starts them
at 0, 16 (a chunk boundary) and 21 (mid-chunk), row 1 at 5 and 30, so its first document continues the
initial state; the interpreted Triton kernels get a shorter window of the same kinds. Each document's
outputs (and the final state, from the last one) must equal those of the document run alone, from the
initial state for row 1's first one and from a fresh state for the others, to float64 rounding; no
gradient may cross a start: the loss of one document of row 0 gives exactly zero gradient to everything
outside it, the initial state included.
"""

from typing import NamedTuple

import pytest
import torch

from xlstm_lm.kernels import mlstm, slstm

from .conftest import DEVICE, TOLERANCES, relative_error

CHUNK = 16


class Layout(NamedTuple):
    """S steps per row; the document starts of each row; the steps of the document of row 0 with a loss."""

    S: int
    starts: tuple[tuple[int, ...], ...]
    loss_span: tuple[int, int]

    def doc_starts(self) -> torch.Tensor:
        """(B, S) bool."""
        flags = torch.zeros(len(self.starts), self.S, dtype=torch.bool)
        for row, starts in enumerate(self.starts):
            flags[row, list(starts)] = True
        return flags

    def documents(self, row: int) -> list[tuple[int, int, bool]]:
        """(start, stop, continues the initial state) of each document of a row."""
        bounds = sorted({0, *self.starts[row], self.S})
        return [(a, e, a == 0 and 0 not in self.starts[row]) for a, e in zip(bounds[:-1], bounds[1:])]

    def outside_the_loss_document(self, grad: torch.Tensor, time_dim: int) -> torch.Tensor:
        """The gradient everywhere but row 0's steps loss_span (time on `time_dim`)."""
        keep = torch.ones_like(grad, dtype=torch.bool)
        keep[0].narrow(time_dim - 1, self.loss_span[0], self.loss_span[1] - self.loss_span[0]).fill_(False)
        return grad[keep]


WINDOW = Layout(37, ((0, 16, 21), (5, 30)), (21, 37))  # the loss document starts mid-chunk, spans two
SHORT = Layout(20, ((0, 7, 16), (5, 12)), (7, 16))  # for the interpreter: still a start at a chunk boundary
# for the interpreted mLSTM kernels: the loss document carries its state across a chunk boundary, from a
# chunk that also holds two other documents; row 1 starts one at the boundary
CROSSING = Layout(20, ((0, 7, 12), (5, 16)), (12, 20))


def loss_of_one_document(h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ weights ⊙ h² over one document's outputs h."""
    return (weights * h.double() ** 2).sum()


def unstabilized(C, n, m):
    """A final mLSTM state as (C e^m, n e^m): backends may stabilize by different m."""
    return C * m.exp()[..., None, None], n * m.exp()[..., None]


@pytest.mark.parametrize("regime", ["realistic", "extreme"])
@pytest.mark.parametrize("backend", ["reference", "recurrent", "native"])
def test_mlstm_documents_are_separate(backend, regime, mlstm_inputs, rng):
    x = mlstm_inputs(B=2, NH=2, S=WINDOW.S, DQK=8, DV=8, regime=regime, with_state=True)
    leaves = {name: t.clone().requires_grad_(name != "m") for name, t in x.items()}
    names = ("q", "k", "v", "i", "f")
    h, final = mlstm(*(leaves[name] for name in names), (leaves["C"], leaves["n"], leaves["m"]),
                     doc_starts=WINDOW.doc_starts(), backend=backend, chunk_size=CHUNK, return_state=True)
    weights = torch.randn(h[0, :, slice(*WINDOW.loss_span)].shape, generator=rng, dtype=torch.float64)
    loss_of_one_document(h[0, :, slice(*WINDOW.loss_span)], weights).backward()
    for name in names:
        assert WINDOW.outside_the_loss_document(leaves[name].grad, 2).eq(0).all(), f"d{name} crosses a start"
    assert leaves["C"].grad.eq(0).all() and leaves["n"].grad.eq(0).all()
    for row in range(2):
        for a, e, continues in WINDOW.documents(row):
            state = tuple(x[name][row:row + 1] for name in ("C", "n", "m")) if continues else None
            alone = {name: x[name][row:row + 1, :, a:e].clone().requires_grad_() for name in names}
            h_alone, final_alone = mlstm(*alone.values(), state, backend=backend, chunk_size=CHUNK, return_state=True)
            assert relative_error(h[row:row + 1, :, a:e], h_alone) < 1e-12, (row, a, e)
            if (row, (a, e)) == (0, WINDOW.loss_span):
                loss_of_one_document(h_alone[0], weights).backward()
                for name in names:
                    grad = leaves[name].grad[row:row + 1, :, a:e]
                    # 1e-9: alone, the document starts its own chunks, and ±30 gates round differently there
                    assert relative_error(grad, alone[name].grad) < 1e-9, f"d{name}"
        for part, part_alone in zip(unstabilized(*final), unstabilized(*final_alone)):
            assert relative_error(part[row:row + 1], part_alone) < 1e-12


@pytest.mark.parametrize("regime", ["realistic", "extreme"])
def test_mlstm_triton_documents_are_separate(regime, mlstm_inputs, rng):
    """The Triton kernels in float32 against the float64 reference of each document alone: outputs, final
    state and the gradients of the document with the loss."""
    x = mlstm_inputs(B=2, NH=1, S=CROSSING.S, DQK=16, DV=16, regime=regime, with_state=True)
    leaves = {name: t.float().to(DEVICE).requires_grad_(name in ("q", "k", "v", "i", "f")) for name, t in x.items()}
    h, final = mlstm(*(leaves[name] for name in ("q", "k", "v", "i", "f")), (leaves["C"], leaves["n"], leaves["m"]),
                     doc_starts=CROSSING.doc_starts().to(DEVICE), backend="triton", chunk_size=CHUNK, return_state=True)
    h, final = h.cpu(), [part.detach().cpu() for part in final]
    weights = torch.randn(h[0, :, slice(*CROSSING.loss_span)].shape, generator=rng, dtype=torch.float64)
    loss_of_one_document(h[0, :, slice(*CROSSING.loss_span)], weights).backward()
    leaked = max(CROSSING.outside_the_loss_document(leaves[name].grad.cpu(), 2).abs().max().item() for name in "qkvif")
    fwd_tol, grad_tol = TOLERANCES[regime]
    errors, grad_errors = [], {}
    for row in range(2):
        for a, e, continues in CROSSING.documents(row):
            state = tuple(x[name][row:row + 1] for name in ("C", "n", "m")) if continues else None
            alone = {name: x[name].float().double()[row:row + 1, :, a:e].requires_grad_() for name in "qkvif"}
            ref, final_ref = mlstm(*alone.values(), state, backend="reference", return_state=True)
            errors.append(relative_error(h[row:row + 1, :, a:e], ref))
            if (row, (a, e)) == (0, CROSSING.loss_span):
                loss_of_one_document(ref[0], weights).backward()
                grad_errors = {name: relative_error(leaves[name].grad.cpu()[row:row + 1, :, a:e], alone[name].grad)
                               for name in "qkvif"}
        errors += [relative_error(part[row:row + 1], part_ref.detach())  # from the row's last document
                   for part, part_ref in zip(unstabilized(*final), unstabilized(*final_ref))]
    assert leaked == 0 and max(errors) < fwd_tol, f"gradient leak {leaked:.1e}, forward errors {errors}"
    assert max(grad_errors.values()) < grad_tol, grad_errors


def slstm_inputs_of(slstm_inputs, layout: Layout, NH: int, DH: int, regime: str) -> dict[str, torch.Tensor]:
    """sLSTM inputs with R ~ N(0, 0.3²) (trained models have non-zero R; memory mixing carries the past)."""
    x = slstm_inputs(B=2, S=layout.S, NH=NH, DH=DH, regime=regime, with_state=True)
    x["R"] = torch.randn(x["R"].shape, generator=torch.Generator().manual_seed(DH), dtype=torch.float64) * 0.3
    return x


def check_slstm(x: dict[str, torch.Tensor], layout: Layout, backend: str, dtype: torch.dtype, fwd_tol: float,
                grad_tol: float, rng):
    """`backend` in `dtype` on the packed window against the float64 native loop on each document alone."""
    leaves = {name: t.to(DEVICE, dtype, copy=True).requires_grad_(name != "m") for name, t in x.items()}
    y, final = slstm(leaves["gates_x"], leaves["R"], leaves["b"], tuple(leaves[name] for name in "ycnm"),
                     doc_starts=layout.doc_starts().to(DEVICE), backend=backend, return_state=True)
    y, final = y.cpu(), [part.cpu() for part in final]
    weights = torch.randn(y[0, slice(*layout.loss_span)].shape, generator=rng, dtype=torch.float64)
    loss_of_one_document(y[0, slice(*layout.loss_span)], weights).backward()
    grads = {name: leaves[name].grad.cpu() for name in ("gates_x", "y", "c", "n")}
    assert layout.outside_the_loss_document(grads["gates_x"], 1).eq(0).all(), "dgates_x crosses a start"
    assert all(grads[name].eq(0).all() for name in "ycn"), "the initial state gets a gradient"
    for row in range(2):
        for a, e, continues in layout.documents(row):
            state = tuple(x[name][row:row + 1] for name in "ycnm") if continues else None
            gates = x["gates_x"].to(dtype).double()[row:row + 1, a:e].requires_grad_()
            y_alone, final_alone = slstm(gates, x["R"], x["b"], state, backend="native", return_state=True)
            assert relative_error(y[row:row + 1, a:e], y_alone) < fwd_tol, (row, a, e)
            if (row, (a, e)) == (0, layout.loss_span):
                loss_of_one_document(y_alone[0], weights).backward()
                assert relative_error(grads["gates_x"][row:row + 1, a:e], gates.grad) < grad_tol
        for part, part_alone in zip(final[:3], final_alone[:3]):  # y, c, n; c and n share the stabilizer m
            assert relative_error(part[row:row + 1], part_alone) < fwd_tol


@pytest.mark.parametrize("regime", ["realistic", "extreme"])
def test_slstm_native_documents_are_separate(regime, slstm_inputs, rng):
    x = slstm_inputs_of(slstm_inputs, WINDOW, NH=2, DH=4, regime=regime)
    check_slstm(x, WINDOW, "native", torch.float64, 1e-12, 1e-10, rng)


@pytest.mark.parametrize("DH, regime", [(16, "extreme"), (8, "realistic")])  # on chip; wide (R from memory)
def test_slstm_triton_documents_are_separate(DH, regime, slstm_inputs, rng):
    x = slstm_inputs_of(slstm_inputs, SHORT, NH=1, DH=DH, regime=regime)
    check_slstm(x, SHORT, "triton", torch.float32, *TOLERANCES[regime], rng)
