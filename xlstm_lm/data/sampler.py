"""Seeded, rank-aware, resumable order of training windows (DESIGN.md §10).

All ranks walk one global sequence of window indices: the concatenation of per-epoch permutations, epoch e
shuffled by a generator seeded with (seed, e). Global micro-batch t is the positions
[t * B * W, (t + 1) * B * W) of that sequence (B windows per rank, W ranks) and rank r takes the slice
[r * B, (r + 1) * B) of it. So ranks never overlap, a run on W ranks sees the same global batches as one
process with batch B * W, and a position in the sequence (a single integer) is the whole state needed to
resume. DataLoader workers draw batches of indices from the sampler in the main process, so they never
overlap either.
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

    def __iter__(self) -> Iterator[int]:
        epoch, permutation = -1, None
        k = 0
        while True:
            position = self.global_position(k)
            if position // self.num_windows != epoch:
                epoch = position // self.num_windows
                permutation = epoch_permutation(self.num_windows, self.seed, epoch)
            yield int(permutation[position % self.num_windows])
            k += 1
