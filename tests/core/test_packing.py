"""Property tests for the pure packing core."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.packing import Packer, PackSpec, build_stream, concat_blocks

CLS, SEP = 1, 2

docs_strategy = st.lists(
    st.lists(st.integers(min_value=5, max_value=60_000), min_size=0, max_size=40),
    min_size=0,
    max_size=30,
)


def _spec(framed: bool, block_size: int) -> PackSpec:
    if framed:
        return PackSpec(block_size=block_size, doc_prefix=(), doc_suffix=(SEP,), frame=(CLS, SEP))
    return PackSpec(block_size=block_size, doc_prefix=(CLS,), doc_suffix=(SEP,), frame=None)


def _flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([t for d in docs for t in d], dtype=np.uint32)
    return ids, np.array([len(d) for d in docs], dtype=np.int64)


def _reference_stream(docs: list[list[int]], spec: PackSpec) -> tuple[list[int], list[int]]:
    stream, starts = [], []
    for d in docs:
        starts.append(len(stream))
        stream += [*spec.doc_prefix, *d, *spec.doc_suffix]
    return stream, starts


@given(docs=docs_strategy)
def test_build_stream_matches_reference(docs: list[list[int]]) -> None:
    spec = _spec(False, 8)
    stream, starts = build_stream(*_flat(docs), spec.doc_prefix, spec.doc_suffix)
    ref_stream, ref_starts = _reference_stream(docs, spec)
    assert stream.tolist() == ref_stream
    assert starts.tolist() == ref_starts


@settings(max_examples=200)
@given(
    docs=docs_strategy,
    framed=st.booleans(),
    block_size=st.integers(min_value=3, max_value=40),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=5),
)
def test_blocks_are_the_stream_cut_in_order(
    docs: list[list[int]], framed: bool, block_size: int, cuts: list[int]
) -> None:
    """Feeding documents in any batching gives the same blocks: full size, the stream's prefix,
    frames in place, document starts where documents start, leftover < one block."""
    spec = _spec(framed, block_size)
    packer = Packer(spec)
    parts = []
    bounds = sorted({0, len(docs), *[min(c, len(docs)) for c in cuts]})
    for lo, hi in itertools.pairwise(bounds):
        stream, starts = build_stream(*_flat(docs[lo:hi]), spec.doc_prefix, spec.doc_suffix)
        parts.append(packer.add(stream, starts))
    blocks = concat_blocks(parts, block_size)
    leftover, leftover_starts = packer.leftover()
    ref_stream, ref_starts = _reference_stream(docs, spec)

    assert blocks.tokens.shape == (blocks.num_blocks, block_size)
    assert leftover.size < spec.content_size
    content = blocks.tokens[:, 1:-1] if framed else blocks.tokens
    if framed and blocks.num_blocks:
        assert (blocks.tokens[:, 0] == CLS).all() and (blocks.tokens[:, -1] == SEP).all()
    assert content.ravel().tolist() + leftover.tolist() == ref_stream
    # Token ledger: stream tokens + frames = block tokens + leftover.
    assert len(ref_stream) + blocks.num_blocks * spec.frame_tokens == (
        blocks.tokens.size + leftover.size
    )
    # Document starts, mapped back to stream offsets, are exactly the reference starts.
    offsets = blocks.start_offsets
    assert offsets[0] == 0 and offsets[-1] == blocks.start_values.size
    assert (np.diff(offsets) >= 0).all()
    found = []
    for b in range(blocks.num_blocks):
        for pos in blocks.start_values[offsets[b] : offsets[b + 1]]:
            found.append(b * spec.content_size + int(pos) - (1 if framed else 0))
    used = blocks.num_blocks * spec.content_size
    found += [used + int(s) for s in leftover_starts]
    assert found == ref_starts


def test_framed_block_layout_example() -> None:
    spec = _spec(True, 8)
    stream, starts = build_stream(
        np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], np.uint32),
        np.array([3, 0, 7]),
        (),
        (SEP,),
    )
    packer = Packer(spec)
    blocks = packer.add(stream, starts)
    assert blocks.tokens.tolist() == [[1, 10, 11, 12, 2, 2, 13, 2], [1, 14, 15, 16, 17, 18, 19, 2]]
    assert blocks.start_values.tolist() == [1, 5, 6]
    assert blocks.start_offsets.tolist() == [0, 3, 3]
    assert packer.leftover()[0].tolist() == [2]
