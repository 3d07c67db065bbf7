"""Seeded, rank-aware, resumable order of training windows (DESIGN.md §10).

All ranks walk one global sequence of window indices: the concatenation of per-epoch permutations, epoch e
being `numpy.random.default_rng([seed, e]).permutation(num_windows)`. Global micro-batch t is the positions
[t * B * W, (t + 1) * B * W) of that sequence (B windows per rank, W ranks) and rank r takes the slice
[r * B, (r + 1) * B) of it. So ranks never overlap, a run on W ranks sees the same global batches as one
process with batch B * W, and a position in the sequence (a single integer) is the whole state needed to
resume. DataLoader workers draw batches of indices from the sampler in the main process, so they never
overlap either.

`StreamSampler` keeps that arithmetic of positions, ranks and resumption but serves contiguous streams
(stateful training): each of the B * W rows of a global micro-batch reads its own run of consecutive
windows, one window per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_permutation(num_windows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the windows in one epoch: a permutation of range(num_windows) fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_windows)


class ResumableSampler(Sampler[int]):
    """Endless shuffled window indices for one rank, starting at a global position.

    Args:
        num_windows: windows in the training split.
        batch_size: B, windows per rank per micro-batch.
        seed: fixes the order of every epoch.
        rank: this process's rank r.
        world_size: W, the number of ranks.
        start: global position of the first window to yield (0 for a fresh run; the saved position on resume).
    """

    def __init__(self, num_windows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if num_windows < 1:
            raise ValueError("the training split has no window to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        if start < 0:
            raise ValueError(f"start position must be >= 0, got {start}")
        self.num_windows = num_windows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def global_position(self, k: int) -> int:
        """Position in the global sequence of this rank's k-th index."""
        micro_batch, offset = divmod(k, self.batch_size)
        return self.start + micro_batch * self.batch_size * self.world_size + self.rank * self.batch_size + offset

    def epoch_length(self) -> int:
        """Global positions per epoch."""
        return self.num_windows

    def window(self, permutation: np.ndarray, position: int) -> int:
        """The window at a global position, given the permutation of the position's epoch."""
        return int(permutation[position % self.num_windows])

    def __iter__(self) -> Iterator[int]:
        epoch, permutation = -1, None
        k = 0
        while True:
            position = self.global_position(k)
            if position // self.epoch_length() != epoch:
                epoch = position // self.epoch_length()
                permutation = epoch_permutation(self.permuted_items(), self.seed, epoch)
            yield self.window(permutation, position)
            k += 1

    def permuted_items(self) -> int:
        """How many things an epoch's permutation orders: the windows."""
        return self.num_windows


class StreamSampler(ResumableSampler):
    """Contiguous streams for stateful training (truncated backpropagation through time), one per batch row.

    The R = B * W global rows of a micro-batch share the windows out in runs of L = num_windows // R
    consecutive windows (run j: windows j * L ... j * L + L - 1; the last num_windows % R windows are never
    served). In epoch e (L micro-batches) global row g reads run `epoch_permutation(R, seed, e)[g]`, one
    window per micro-batch, so row g of micro-batch t + 1 continues exactly where row g of micro-batch t
    ended, except at the start of an epoch, where every row starts a new run together. Rank r holds rows
    [r * B, (r + 1) * B), as in `ResumableSampler`, whose arguments it takes.
    """

    def __init__(self, num_windows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        super().__init__(num_windows, batch_size, seed, rank, world_size, start)
        self.rows = batch_size * world_size
        if num_windows < self.rows:
            raise ValueError(f"the training split has {num_windows} windows, fewer than the {self.rows} streams "
                             "(data.batch_size times the processes) of data.stateful=true: lower data.seq_len or "
                             "data.batch_size")
        self.run_length = num_windows // self.rows  # L

    def epoch_length(self) -> int:
        return self.rows * self.run_length

    def permuted_items(self) -> int:
        """The runs: an epoch's permutation says which run each row reads."""
        return self.rows

    def window(self, permutation: np.ndarray, position: int) -> int:
        step, row = divmod(position % self.epoch_length(), self.rows)
        return int(permutation[row]) * self.run_length + step
