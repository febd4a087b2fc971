"""BlockSampler: permutations per (seed, epoch), rank split, locality, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.train.sampler import BlockSampler

chunk_sizes = st.lists(st.integers(1, 40), min_size=1, max_size=12)
seeds = st.integers(0, 2**32 - 1)


def epoch_order(sampler: BlockSampler, epoch: int) -> np.ndarray:
    """The whole permutation of one epoch, from the stream of keys."""
    n = sampler.num_blocks
    return sampler.stream_keys(epoch * n, (epoch + 1) * n) - epoch * n


def window_bounds(sampler: BlockSampler, epoch: int) -> np.ndarray:
    """Offsets within the epoch where shuffle windows start, plus the epoch length."""
    return sampler._epoch_plan(epoch)[0]


def take(sampler: BlockSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


@settings(max_examples=60, deadline=None)
@given(sizes=chunk_sizes, window=st.integers(1, 5), seed=seeds, epoch=st.integers(0, 50))
def test_every_epoch_is_a_permutation_of_all_blocks(
    sizes: list[int], window: int, seed: int, epoch: int
) -> None:
    sampler = BlockSampler(sizes, batch_size=1, seed=seed, window_chunks=window)
    order = epoch_order(sampler, epoch)
    assert order.size == sum(sizes) > 0
    assert np.array_equal(np.sort(order), np.arange(sum(sizes)))
    again = BlockSampler(sizes, batch_size=3, seed=seed, window_chunks=window)
    assert np.array_equal(epoch_order(again, epoch), order)  # deterministic per (seed, epoch)


@settings(max_examples=40, deadline=None)
@given(sizes=chunk_sizes, window=st.integers(1, 4), seed=seeds, epoch=st.integers(0, 9))
def test_a_window_draws_from_at_most_window_chunks_chunks(
    sizes: list[int], window: int, seed: int, epoch: int
) -> None:
    sampler = BlockSampler(sizes, batch_size=1, seed=seed, window_chunks=window)
    order = epoch_order(sampler, epoch)
    chunk_of = np.searchsorted(sampler.chunk_starts, order, side="right") - 1
    bounds = window_bounds(sampler, epoch)
    assert bounds[0] == 0 and bounds[-1] == order.size
    for lo, hi in itertools.pairwise(bounds):
        assert 0 < len(set(chunk_of[lo:hi].tolist())) <= window


def test_epochs_and_seeds_change_the_order() -> None:
    sampler = BlockSampler([50, 50, 30], batch_size=4, seed=1, window_chunks=2)
    other_seed = BlockSampler([50, 50, 30], batch_size=4, seed=2, window_chunks=2)
    assert not np.array_equal(epoch_order(sampler, 0), epoch_order(sampler, 1))
    assert not np.array_equal(epoch_order(sampler, 0), epoch_order(other_seed, 0))


@settings(max_examples=60, deadline=None)
@given(
    sizes=chunk_sizes,
    world=st.integers(1, 4),
    batch=st.integers(1, 7),
    steps=st.integers(1, 30),
    seed=seeds,
)
def test_ranks_split_the_stream_with_no_overlap_and_no_gap(
    sizes: list[int], world: int, batch: int, steps: int, seed: int
) -> None:
    ranks = [
        BlockSampler(sizes, batch_size=batch, seed=seed, rank=r, world_size=world, window_chunks=2)
        for r in range(world)
    ]
    per_rank = [take(s, steps) for s in ranks]
    assert all(len(b) == batch for batches in per_rank for b in batches)  # equal DDP steps
    seen = [k for m in range(steps) for r in range(world) for k in per_rank[r][m]]
    expected = ranks[0].stream_keys(0, steps * world * batch).tolist()
    assert seen == expected
    n = sum(sizes)
    assert len(set(seen)) == len(seen)  # keys are epoch * n + block: never repeated
    full_epochs = len(seen) // n
    for epoch in range(full_epochs):  # every whole epoch covers every block once
        blocks = sorted(k - epoch * n for k in seen if k // n == epoch)
        assert blocks == list(range(n))


@settings(max_examples=60, deadline=None)
@given(
    sizes=chunk_sizes,
    batch=st.integers(1, 7),
    done=st.integers(0, 25),
    world=st.integers(1, 3),
    new_world=st.integers(1, 3),
    seed=seeds,
)
def test_resume_continues_exactly_from_the_state(
    sizes: list[int], batch: int, done: int, world: int, new_world: int, seed: int
) -> None:
    first = BlockSampler(sizes, batch_size=batch, seed=seed, world_size=world, window_chunks=3)
    _ = take(first, done + 5)  # prefetching past the resume point must not matter
    first.mark_consumed(done)
    state = first.state_dict()

    resumed = BlockSampler(sizes, batch_size=batch, seed=seed, world_size=world, window_chunks=3)
    resumed.load_state_dict(state)
    tail = take(resumed, 4)
    reference = take(BlockSampler(sizes, batch_size=batch, seed=seed, world_size=world,
                                  window_chunks=3), done + 4)[done:]  # fmt: skip
    assert tail == reference

    # Another world size continues the same stream from the same position.
    ranks = [
        BlockSampler(sizes, batch_size=batch, seed=seed, rank=r, world_size=new_world,
                     window_chunks=3)
        for r in range(new_world)
    ]  # fmt: skip
    for s in ranks:
        s.load_state_dict(state)
    got = [k for b in zip(*(take(s, 3) for s in ranks), strict=True) for part in b for k in part]
    start = done * world * batch
    assert got == first.stream_keys(start, start + 3 * new_world * batch).tolist()


def test_state_of_another_dataset_is_refused() -> None:
    state = BlockSampler([10, 10], batch_size=2, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_blocks=20, this sampler 30"):
        BlockSampler([10, 20], batch_size=2, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_sizes": []}, "chunk sizes must be positive"),
        ({"chunk_sizes": [3, 0]}, "chunk sizes must be positive"),
        ({"batch_size": 0}, "bad batch_size"),
        ({"rank": 2, "world_size": 2}, "bad batch_size 1, rank 2"),
        ({"window_chunks": 0}, "window_chunks must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = {"chunk_sizes": [4, 4], "batch_size": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        BlockSampler(args.pop("chunk_sizes"), **args)
