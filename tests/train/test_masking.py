"""Masking: BERT's rules, special tokens never chosen, real-vocabulary random ids, reproducible
per (seed, epoch, block), and the same statistics as DataCollatorForLanguageModeling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.train.dataset import BlockBatch
from pipeline.train.masking import Masker, MaskingSpec, MLMCollator

VOCAB = 50
SPECIALS = (0, 1, 2, 3, 49)  # pad, cls, sep, unk, mask
SPEC = MaskingSpec(mask_id=49, vocab_size=VOCAB, special_ids=SPECIALS)


def mask(spec: MaskingSpec, tokens: np.ndarray, seed: int = 0, epoch: int = 0) -> tuple:
    index = np.arange(tokens.shape[0], dtype=np.int64)
    return Masker(spec)(tokens, index, np.full_like(index, epoch), seed)


@settings(max_examples=80, deadline=None)
@given(
    tokens=arrays(np.uint16, st.tuples(st.integers(1, 6), st.integers(1, 40)),
                  elements=st.integers(0, VOCAB - 1)),
    probability=st.floats(0.01, 1.0),
    mask_fraction=st.floats(0.0, 1.0),
    random_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**40),
)  # fmt: skip
def test_masking_rules_hold_for_any_blocks(
    tokens: np.ndarray, probability: float, mask_fraction: float, random_share: float, seed: int
) -> None:
    random_fraction = (1.0 - mask_fraction) * random_share
    spec = MaskingSpec(
        mask_id=49,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        probability=probability,
        mask_fraction=mask_fraction,
        random_fraction=random_fraction,
    )
    inputs, labels = mask(spec, tokens, seed)
    chosen = labels != -100
    assert inputs.dtype == labels.dtype == np.int64
    assert np.array_equal(labels[chosen], tokens[chosen])
    assert np.array_equal(inputs[~chosen], tokens[~chosen])  # unchosen tokens untouched
    assert not np.isin(tokens[chosen], SPECIALS).any()  # special tokens are never chosen
    changed = chosen & (inputs != tokens) & (inputs != 49)
    assert not np.isin(inputs[changed], SPECIALS).any()  # random ids are real, non-special
    assert (inputs < VOCAB).all()
    again = mask(spec, tokens, seed)
    assert np.array_equal(again[0], inputs) and np.array_equal(again[1], labels)


def test_a_block_is_masked_the_same_in_any_batch_and_differs_by_epoch() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 49, size=(8, 64), dtype=np.uint16)
    masker = Masker(SPEC)
    index = np.arange(100, 108, dtype=np.int64)
    epoch = np.full(8, 3, dtype=np.int64)
    inputs, labels = masker(tokens, index, epoch, 7)
    order = rng.permutation(8)
    sub = order[:3]  # three of the blocks, shuffled, in a smaller batch
    inputs2, labels2 = masker(tokens[sub], index[sub], epoch[sub], 7)
    assert np.array_equal(inputs2, inputs[sub]) and np.array_equal(labels2, labels[sub])
    _, other_epoch = masker(tokens, index, epoch + 1, 7)
    _, other_seed = masker(tokens, index, epoch, 8)
    assert (labels != -100).sum() > 0
    assert not np.array_equal(other_epoch, labels)
    assert not np.array_equal(other_seed, labels)


def test_random_ids_come_from_the_real_vocabulary_only() -> None:
    """DeBERTa-v3's shape: 128,001 tokens ([MASK] = 128000) in a 128,100-row embedding."""
    specials = (0, 1, 2, 3, 128_000)
    spec = MaskingSpec(
        mask_id=128_000,
        vocab_size=128_001,
        special_ids=specials,
        probability=1.0,
        mask_fraction=0.0,
        random_fraction=1.0,
    )
    tokens = np.random.default_rng(1).integers(4, 128_000, size=(64, 128)).astype(np.uint32)
    inputs, labels = mask(spec, tokens)
    assert (labels != -100).all()
    assert inputs.max() < 128_000 and not np.isin(inputs, specials).any()
    assert len(np.unique(inputs)) > 7000  # spread over the vocabulary, not a few ids


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probability": 0.0}, r"probability must be in \(0, 1\]"),
        ({"mask_fraction": 0.9, "random_fraction": 0.2}, "exceed 1"),
        ({"random_fraction": -0.1}, "must be >= 0"),
        ({"mask_id": 50}, "mask id 50 is not below vocab size 50"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, match: str) -> None:
    args = {"mask_id": 49, "vocab_size": VOCAB, "special_ids": SPECIALS} | kwargs
    with pytest.raises(ValueError, match=match):
        MaskingSpec(**args)


def test_statistics_match_data_collator_for_language_modeling(shards: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pipeline.train.dataset import BlockDataset
    from tests.conftest import BERT

    data = BlockDataset(shards, "train")
    batch = data[list(range(0, 1024))]
    spec = MaskingSpec.from_manifest(data.tokenizer)
    ours_in, ours_labels = Masker(spec)(batch.tokens, batch.block_index, batch.epoch, 3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(BERT))
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, seed=3)
    hf = collator([{"input_ids": row.tolist()} for row in batch.tokens])
    tokens = torch.from_numpy(batch.tokens.astype(np.int64))

    def stats(inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        chosen = labels != -100
        special = torch.from_numpy(np.isin(batch.tokens, spec.special_ids))
        n = int(chosen.sum())
        return {
            "rate": n / int((~special).sum()),
            "special_chosen": int((chosen & special).sum()),
            "mask": int((chosen & (inputs == spec.mask_id)).sum()) / n,
            "kept": int((chosen & (inputs == tokens)).sum()) / n,
            "random": int((chosen & (inputs != tokens) & (inputs != spec.mask_id)).sum()) / n,
        }

    ours = stats(torch.from_numpy(ours_in), torch.from_numpy(ours_labels))
    theirs = stats(hf["input_ids"], hf["labels"])
    assert int((torch.from_numpy(ours_labels) != -100).sum()) > 15_000  # saw real work
    assert ours["special_chosen"] == theirs["special_chosen"] == 0
    # 131 K tokens: the rate's standard error is 0.001, the shares' about 0.004.
    assert abs(ours["rate"] - 0.15) < 0.005 and abs(theirs["rate"] - 0.15) < 0.005
    for key in ("mask", "kept", "random"):
        assert abs(ours[key] - theirs[key]) < 0.02, (key, ours, theirs)
    assert abs(ours["mask"] - 0.8) < 0.02 and abs(ours["random"] - 0.1) < 0.015


def test_collator_takes_batches_and_example_lists_alike() -> None:
    torch = pytest.importorskip("torch")
    tokens = np.random.default_rng(2).integers(4, 49, size=(4, 16), dtype=np.uint16)
    index = np.array([5, 6, 7, 8], dtype=np.int64)
    doc_ids = np.zeros((4, 16), dtype=np.int32)
    doc_ids[:, 9:] = 1
    batch = BlockBatch(tokens=tokens, block_index=index, epoch=np.zeros(4, np.int64),
                       doc_ids=doc_ids)  # fmt: skip
    collator = MLMCollator(SPEC, seed=1, doc_attention=True, with_keys=True)
    fast = collator(batch)
    examples = [{"input_ids": tokens[i], "block_index": int(index[i]), "doc_ids": doc_ids[i]}
                for i in range(4)]  # fmt: skip
    slow = collator(examples)
    for key in ("input_ids", "labels", "attention_mask", "block_index"):
        assert torch.equal(fast[key], slow[key]), key
    assert fast["input_ids"].dtype == torch.int64
    bias = fast["attention_mask"]
    assert bias.shape == (4, 1, 16, 16)
    assert bias[0, 0, 0, 8] == 0 and bias[0, 0, 0, 9] < -1e30  # no attention across documents
    # Without block indices (transformers.Trainer drops unknown columns) masks still vary.
    plain = MLMCollator(SPEC, seed=1)
    first = plain([{"input_ids": t} for t in tokens])
    second = plain([{"input_ids": t} for t in tokens])
    assert set(first) == {"input_ids", "labels"}
    assert not torch.equal(first["labels"], second["labels"])
