"""ResumableSampler: seeded epochs, disjoint rank shares, same global batches on any number of ranks, resume.
StreamSampler: the contiguous streams of stateful training, with the same arithmetic of ranks and positions."""

import itertools

import numpy as np
import pytest

from xlstm_lm.data.sampler import ResumableSampler, StreamSampler, epoch_permutation


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_each_epoch_is_a_permutation_fixed_by_the_seed():
    indices = take(ResumableSampler(10, batch_size=3, seed=7), 30)
    for epoch in range(3):
        assert sorted(indices[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
        assert indices[epoch * 10 : (epoch + 1) * 10] == epoch_permutation(10, 7, epoch).tolist()
    assert indices[:10] != indices[10:20]
    assert take(ResumableSampler(10, 3, seed=7), 30) == indices
    assert take(ResumableSampler(10, 3, seed=8), 10) != indices[:10]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_global_batch_like_one_process_with_the_global_batch(world_size):
    batch_size, micro_batches = 4, 9
    single = take(ResumableSampler(13, batch_size * world_size, seed=1), micro_batches * batch_size * world_size)
    per_rank = [take(ResumableSampler(13, batch_size, 1, rank, world_size), micro_batches * batch_size)
                for rank in range(world_size)]
    for step in range(micro_batches):
        global_batch = single[step * batch_size * world_size : (step + 1) * batch_size * world_size]
        ranks = [indices[step * batch_size : (step + 1) * batch_size] for indices in per_rank]
        assert sum(ranks, []) == global_batch


def test_ranks_never_overlap_within_an_epoch():
    shares = [take(ResumableSampler(64, 4, seed=3, rank=rank, world_size=4), 16) for rank in range(4)]
    assert sorted(sum(shares, [])) == list(range(64))


@pytest.mark.parametrize("consumed", [0, 5, 13, 29])
def test_resuming_at_a_position_continues_the_same_sequence(consumed):
    full = take(ResumableSampler(13, 2, seed=5, rank=1, world_size=2), 60)
    # rank 1's k-th index sits at global position 4 * (k // 2) + 2 + k % 2; resume after `consumed` global batches
    resumed = take(ResumableSampler(13, 2, seed=5, rank=1, world_size=2, start=consumed * 4), 60 - 2 * consumed)
    assert resumed == full[2 * consumed :]


def test_resuming_on_a_different_number_of_ranks_keeps_the_global_order():
    single = take(ResumableSampler(11, 4, seed=2), 40)
    start = 12  # three global batches of 4 done on one process, continue on two ranks of 2
    two = [take(ResumableSampler(11, 2, 2, rank, 2, start=start), 14) for rank in range(2)]
    interleaved = list(itertools.chain.from_iterable(
        two[0][k : k + 2] + two[1][k : k + 2] for k in range(0, 14, 2)))
    assert interleaved == single[start : start + 28]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no window"):
        ResumableSampler(0, 1, 0)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(4, 1, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start"):
        ResumableSampler(4, 1, 0, start=-1)


def documented_epoch(num_items, seed, epoch):
    """The order of epoch `epoch` as the sampler's docstring states it, written out here (not the sampler's helper)."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def test_the_order_is_the_documented_one_for_every_rank_and_start():
    # global position p of the sequence: epoch p // n, item documented_epoch(n, seed, epoch)[p % n]; global
    # micro-batch t is positions [start + t*B*W, start + (t+1)*B*W), and rank r takes [r*B, (r+1)*B) of it
    num_windows, batch_size, world_size, seed, start, micro_batches = 7, 2, 2, 5, 6, 9
    sequence = np.concatenate([documented_epoch(num_windows, seed, epoch) for epoch in range(8)])
    for rank in range(world_size):
        expected = [int(sequence[start + t * batch_size * world_size + rank * batch_size + j])
                    for t in range(micro_batches) for j in range(batch_size)]
        sampler = ResumableSampler(num_windows, batch_size, seed, rank, world_size, start=start)
        assert take(sampler, micro_batches * batch_size) == expected


def test_stream_rows_read_consecutive_windows_of_the_documented_runs():
    # R = B*W rows share the windows in runs of L = n // R; in epoch e (L micro-batches) global row g reads
    # run documented_epoch(R, seed, e)[g], window run * L + (t % L) at micro-batch t
    num_windows, batch_size, world_size, seed = 23, 2, 2, 3
    rows, run_length = 4, 5  # 23 // 4 = 5: windows 20, 21, 22 are never served
    start_batch, micro_batches = 3, 2 * run_length + 2  # resumed mid-epoch, across two epoch ends
    for rank in range(world_size):
        sampler = StreamSampler(num_windows, batch_size, seed, rank, world_size, start=start_batch * rows)
        assert sampler.run_length == run_length
        served = take(sampler, micro_batches * batch_size)
        for k, window in enumerate(served):
            t, row = start_batch + k // batch_size, rank * batch_size + k % batch_size
            epoch, step = divmod(t, run_length)
            assert window == int(documented_epoch(rows, seed, epoch)[row]) * run_length + step
    with pytest.raises(ValueError, match="fewer than the 4 streams"):
        StreamSampler(3, 2, 0, rank=1, world_size=2)
