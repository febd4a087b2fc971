"""Whole-word and n-gram masking: the vectorized masker against a naive per-token Python
reference (same words, same draws, same result), the word rule of each tokenizer family, the
statistics on real tokenizers, and the refusal of a tokenizer without a rule."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import UsageError
from pipeline.train.dataset import BlockBatch
from pipeline.train.masking import Masker, MaskingSpec, MLMCollator, make_masker
from pipeline.train.word_masking import describe_masking, ngram_probabilities
from pipeline.train.word_starts import build_word_table, detect_word_rule, load_word_table
from tests.conftest import BERT, DICTWIKI, UNIGRAM

# ---- a naive reference: Python ints, one token at a time ------------------------------------

M64 = (1 << 64) - 1


def mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def token_hash(seed: int, epoch: int, block: int, position: int) -> int:
    key = mix(mix(mix(seed) ^ epoch) ^ block)
    return mix(key ^ ((position * 0xD6E8FEB86659FD93) & M64))


def begins_word(rule: str, piece: str) -> bool:
    if rule == "wordpiece":
        return not piece.startswith("##")
    if rule == "metaspace":
        return piece.startswith("▁")
    return piece.startswith("Ġ") or all(c in "ĉĊċČčĠ" for c in piece)


def start_probabilities(p: float, max_ngram: int) -> list[float]:
    """The chance that a word at offset d (d = 0..2N-2, the last for all d >= 2N-2) from its
    segment's first word starts a span, such that every word is covered with chance p: word d
    is missed if none of words d - k (k <= min(d, N-1)) starts a span longer than k; solved
    one offset at a time from q_0 = p, and far from segment starts one q shared by all N
    terms (bisection)."""
    if max_ngram == 1:
        return [p]
    weights = [1 / n for n in range(1, max_ngram + 1)]
    longer = [sum(weights[k:]) / sum(weights) for k in range(max_ngram)]  # P(length > k)
    q = [p]
    for d in range(1, 2 * max_ngram - 2):
        miss = 1.0
        for k in range(1, min(d, max_ngram - 1) + 1):
            miss *= 1 - q[d - k] * longer[k]
        q.append(1 - (1 - p) / miss)
    low, high = 0.0, 1.0
    for _ in range(60):
        mid, miss = (low + high) / 2, 1.0
        for k in range(max_ngram):
            miss *= 1 - mid * longer[k]
        low, high = (mid, high) if 1 - miss < p else (low, mid)
    return [min(max(x, 0.0), p) for x in [*q, high]]


def reference_mask(
    row: list[int], docs: list[int] | None, vocab: dict[str, Any], spec: MaskingSpec,
    seed: int, epoch: int, block: int, max_ngram: int,
) -> tuple[list[int], list[int]]:  # fmt: skip
    pieces, rule, added = vocab["pieces"], vocab["rule"], vocab["added"]
    special = set(spec.special_ids)
    stands_alone = special | added | {i for i, p in pieces.items() if rule == "byte-level"
                                      and all(c in "ĉĊċČčĠ" for c in p)}  # fmt: skip
    words: list[list[int]] = []
    for i, t in enumerate(row):
        new = i == 0 or t in special or t in added or begins_word(rule, pieces[t])
        new = new or row[i - 1] in stands_alone or (docs is not None and docs[i] != docs[i - 1])
        if new:
            words.append([i])
        else:
            words[-1].append(i)
    scale = 1 << 24
    t_mask = round(spec.mask_fraction * scale)
    t_random = round((spec.mask_fraction + spec.random_fraction) * scale)
    candidates = [i for i in range(spec.vocab_size) if i not in special]
    inputs, labels = list(row), [-100] * len(row)
    # Segment starts: no span crosses a block start, a document start or a special token.
    hard = []
    for word in words:
        f = word[0]
        hard.append(f == 0 or row[f] in special or row[f - 1] in special
                    or (docs is not None and docs[f] != docs[f - 1]))  # fmt: skip
    q = start_probabilities(spec.probability, max_ngram)
    cuts, total = [], 0.0
    for n in range(1, max_ngram):
        total += (1 / n) / sum(1 / k for k in range(1, max_ngram + 1))
        cuts.append(round(total * 65536))
    covered, offset = set(), 0
    for w, word in enumerate(words):  # each word may start a span
        offset = 0 if hard[w] else min(offset + 1, len(q) - 1)
        f = word[0]
        draw = token_hash(seed, epoch, block, f)
        if row[f] in special or draw >> 40 >= round(q[offset] * scale):
            continue
        length = 1 + sum((draw & 0xFFFF) >= c for c in cuts)
        for k in range(length):
            if w + k == len(words) or (k > 0 and hard[w + k]):
                break
            covered.add(w + k)
    for w, word in enumerate(words):
        if w not in covered:
            continue
        kind = (token_hash(seed, epoch, block, word[0]) >> 16) & 0xFFFFFF  # one per word
        for pos in word:
            labels[pos] = row[pos]
            if kind < t_mask:
                inputs[pos] = spec.mask_id
            elif kind < t_random:
                r = mix(token_hash(seed, epoch, block, pos) ^ 0x2545F4914F6CDD1D) >> 32
                inputs[pos] = candidates[(r * len(candidates)) >> 32]
    return inputs, labels


# ---- small vocabularies of each family ------------------------------------------------------

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
WORDS = {
    "wordpiece": ["the", "un", "##believ", "##able", "fox", "##es", ",", ".", "run", "##ning",
                  "a", "##b", "##c", "dog", "'", "s", "##s", "z", "##zz", "x"],
    "metaspace": ["▁the", "▁un", "believ", "able", "▁fox", "es", ",", ".", "▁run", "ning",
                  "▁", "(", "'s", "▁dog", "▁a", "b", "c", "▁z", "zz", "x"],
    "byte-level": ["the", "Ġthe", "Ġun", "believ", "able", "Ġfox", "es", ",", ".", "Ċ",
                   "ĊĊ", "ĠĠ", "Ġrun", "ning", "'s", "Ġdog", "a", "b", "Ġz", "zz"],
}  # fmt: skip


def small_tokenizer(rule: str) -> dict[str, Any]:
    """A tokenizer.json of `rule`'s family: 4 specials, 20 pieces, an added word, [MASK]."""
    pieces = SPECIALS + WORDS[rule]
    added = [{"id": i, "content": p, "special": True} for i, p in enumerate(SPECIALS)]
    added += [{"id": len(pieces), "content": "<new>", "special": False}]
    added += [{"id": len(pieces) + 1, "content": "[MASK]", "special": True}]
    if rule == "wordpiece":
        model = {"type": "WordPiece", "continuing_subword_prefix": "##",
                 "vocab": {p: i for i, p in enumerate(pieces)}}  # fmt: skip
        return {
            "model": model,
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "added_tokens": added,
        }
    if rule == "metaspace":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"},
               {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}]}  # fmt: skip
        model = {"type": "Unigram", "vocab": [[p, -1.0] for p in pieces]}
        return {"model": model, "pre_tokenizer": pre, "added_tokens": added}
    model = {"type": "BPE", "vocab": {p: i for i, p in enumerate(pieces)}, "merges": []}
    return {"model": model, "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": added}


def small_vocab(rule: str) -> tuple[dict[str, Any], Any, int]:
    tok = small_tokenizer(rule)
    pieces = {a["id"]: a["content"] for a in tok["added_tokens"]}
    pieces |= dict(enumerate(SPECIALS + WORDS[rule]))
    size = len(pieces)
    vocab = {"pieces": pieces, "rule": rule, "added": {size - 2}}
    return vocab, build_word_table(tok, size), size


def spec_for(table: Any, size: int, strategy: str, **kw: Any) -> MaskingSpec:
    return MaskingSpec(mask_id=size - 1, vocab_size=size, special_ids=(0, 1, 2, 3, size - 1),
                       strategy=strategy, words=table, **kw)  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(
    rule=st.sampled_from(sorted(WORDS)),
    strategy=st.sampled_from(["whole-word", "ngram"]),
    max_ngram=st.integers(1, 5),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 48)),
    data=st.data(),
    probability=st.floats(0.05, 1.0),
    mask_fraction=st.floats(0.0, 1.0),
    random_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 50),
    with_docs=st.booleans(),
)
def test_the_vectorized_masker_equals_the_per_token_reference(
    rule: str, strategy: str, max_ngram: int, shape: tuple[int, int], data: st.DataObject,
    probability: float, mask_fraction: float, random_share: float, seed: int, epoch: int,
    with_docs: bool,
) -> None:  # fmt: skip
    vocab, table, size = small_vocab(rule)
    rows, length = shape
    flat = data.draw(st.lists(st.integers(0, size - 1), min_size=rows * length,
                              max_size=rows * length))  # fmt: skip
    tokens = np.array(flat, dtype=np.uint16).reshape(rows, length)
    docs = None
    if with_docs:
        cuts = data.draw(st.lists(st.booleans(), min_size=rows * length, max_size=rows * length))
        docs = np.cumsum(np.array(cuts).reshape(rows, length), axis=1).astype(np.int32)
    spec = spec_for(table, size, strategy, probability=probability, max_ngram=max_ngram,
                    mask_fraction=mask_fraction,
                    random_fraction=(1 - mask_fraction) * random_share)  # fmt: skip
    index = np.arange(7, 7 + rows, dtype=np.int64)
    inputs, labels = make_masker(spec)(tokens, index, np.full(rows, epoch), seed, doc_ids=docs)
    n = 1 if strategy == "whole-word" else max_ngram
    for r in range(rows):
        row_docs = None if docs is None else docs[r].tolist()
        want = reference_mask(tokens[r].tolist(), row_docs, vocab, spec, seed, epoch,
                              int(index[r]), n)  # fmt: skip
        assert inputs[r].tolist() == want[0] and labels[r].tolist() == want[1], r
    assert inputs.dtype == labels.dtype == np.int64


@pytest.mark.parametrize("max_ngram", [2, 3, 5])
def test_ngram_covers_every_word_with_the_probability_near_segment_starts_too(
    max_ngram: int,
) -> None:
    """One-piece words in documents of 1..7 words: most words sit within N words of a segment
    start, where fewer spans can reach them. Their share is still p at every offset (within
    0.0045 by construction), not the 0.096 that a single span start probability would give
    the first word of a document (N = 3, p = 0.15)."""
    vocab, table, size = small_vocab("wordpiece")
    words = [i for i, p in vocab["pieces"].items() if i >= 4 and i < size - 2
             and not p.startswith("##")]  # fmt: skip
    rng = np.random.default_rng(max_ngram)
    blocks, length = 4000, 64
    tokens = rng.choice(words, size=(blocks, length)).astype(np.uint16)
    docs = np.cumsum(rng.random((blocks, length)) < 0.25, axis=1).astype(np.int32)
    spec = spec_for(table, size, "ngram", max_ngram=max_ngram, probability=0.15)
    index = np.arange(blocks, dtype=np.int64)
    _, labels = make_masker(spec)(tokens, index, np.zeros_like(index), 11, doc_ids=docs)
    chosen = labels != -100
    starts = np.ones_like(chosen)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    offset = np.arange(length)[None, :] - np.maximum.accumulate(
        np.where(starts, np.arange(length)[None, :], 0), axis=1
    )
    for d in range(4):
        at = chosen[offset == d]
        assert at.size > 20_000 and abs(at.mean() - 0.15) < 0.008, (d, at.mean())
    assert abs(chosen.mean() - 0.15) < 0.003  # 256 K words: standard error 0.0007
    runs = chosen[:, 1:] & chosen[:, :-1] & ~starts[:, 1:]
    assert runs.sum() > 0.2 * chosen.sum()  # spans of several words, not single words


def test_token_masking_is_bit_for_bit_what_it_was() -> None:
    """The digest of token masking before word masking existed (main at 79be987)."""
    spec = MaskingSpec(mask_id=49, vocab_size=50, special_ids=(0, 1, 2, 3, 49))
    tokens = np.random.default_rng(13).integers(0, 50, size=(16, 128)).astype(np.uint16)
    index = np.arange(1000, 1016, dtype=np.int64)
    inputs, labels = Masker(spec)(tokens, index, np.full(16, 2, np.int64), 42)
    assert int((labels != -100).sum()) == 269
    digest = hashlib.sha256(inputs.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "ac7c3aea9040695653f6ebcf30d1e3b2aee009da4429224e51cbb60d591d3945"
    assert type(make_masker(spec)) is Masker


# ---- word rules ----------------------------------------------------------------------------


def test_each_family_gets_its_rule_and_table() -> None:
    for rule in WORDS:
        _, table, size = small_vocab(rule)
        starts, breaks = table.arrays()
        pieces = SPECIALS + WORDS[rule]
        assert table.rule.kind == rule and table.vocab_size == size
        assert starts[: len(SPECIALS)].all() and breaks[: len(SPECIALS)].all()
        assert starts[-2:].all() and breaks[-2:].all()  # the added word and [MASK]
        for i, piece in enumerate(pieces[len(SPECIALS) :], len(SPECIALS)):
            assert starts[i] == begins_word(rule, piece), (rule, piece)
    _, table, _ = small_vocab("byte-level")
    starts, breaks = table.arrays()
    ids = {p: i for i, p in enumerate(SPECIALS + WORDS["byte-level"])}
    assert not starts[ids["the"]] and starts[ids["Ġthe"]] and not starts[ids[","]]
    assert starts[ids["Ċ"]] and breaks[ids["ĊĊ"]] and breaks[ids["ĠĠ"]]
    assert not breaks[ids["Ġthe"]]


def test_llama_style_sentencepiece_is_found_in_the_normalizer() -> None:
    tok = {"model": {"type": "BPE", "vocab": {"▁a": 0, "b": 1}}, "pre_tokenizer": None,
           "normalizer": {"type": "Sequence", "normalizers": [
               {"type": "Prepend", "prepend": "▁"},
               {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}  # fmt: skip
    assert detect_word_rule(tok).kind == "metaspace"
    starts, _ = build_word_table(tok, 2).arrays()
    assert starts.tolist() == [True, False]


def test_a_tokenizer_without_a_word_rule_is_refused_in_one_line(tmp_path: Any) -> None:
    tok = {"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"},
           "pre_tokenizer": {"type": "Whitespace"}}  # fmt: skip
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tok))
    match = (
        r"tokenizer.json: expected a tokenizer whose pieces show word starts .* found "
        r"model type WordLevel with pre-tokenizer Whitespace; use --masking token"
    )
    with pytest.raises(UsageError, match=match):
        load_word_table(path, 1)
    path.write_text("{not json")
    with pytest.raises(UsageError, match=r"expected the run's tokenizer\.json"):
        load_word_table(path, 1)


def test_bad_word_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="whole-word masking needs a word table"):
        MaskingSpec(mask_id=4, vocab_size=5, special_ids=(4,), strategy="whole-word")
    with pytest.raises(ValueError, match="strategy must be one of"):
        MaskingSpec(mask_id=4, vocab_size=5, special_ids=(4,), strategy="span")
    _, table, size = small_vocab("wordpiece")
    with pytest.raises(ValueError, match="max_ngram must be at least 1"):
        spec_for(table, size, "ngram", max_ngram=0)


# ---- real tokenizers, real text ------------------------------------------------------------


def framed_blocks(folder: Any, articles: int = 1500) -> tuple[np.ndarray, np.ndarray, Any]:
    """dictwiki articles encoded as `pipeline run` frames them ([CLS] doc [SEP]), cut into
    blocks of 128, with each position's document number."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = pq.read_table(sorted(DICTWIKI.glob("*.parquet"))[0], columns=["text"])
    encodings = tok.encode_batch(texts.column("text").to_pylist()[:articles])
    ids = np.concatenate([e.ids for e in encodings]).astype(np.uint32)
    docs = np.concatenate([np.full(len(e.ids), k) for k, e in enumerate(encodings)])
    n = ids.size // 128 * 128
    return ids[:n].reshape(-1, 128), docs[:n].reshape(-1, 128).astype(np.int32), tok


@pytest.mark.parametrize("folder", [BERT, UNIGRAM], ids=["wordpiece", "unigram"])
@pytest.mark.parametrize("strategy", ["whole-word", "ngram"])
def test_real_tokenizers_mask_whole_words_at_the_asked_rates(folder: Any, strategy: str) -> None:
    tokens, docs, tok = framed_blocks(folder)
    parsed = json.loads((folder / "tokenizer.json").read_text())
    size = tok.get_vocab_size(with_added_tokens=True)
    specials = sorted(a["id"] for a in parsed["added_tokens"] if a["special"])
    table = build_word_table(parsed, size)
    spec = MaskingSpec(mask_id=tok.token_to_id("[MASK]"), vocab_size=size,
                       special_ids=tuple(specials), strategy=strategy, words=table)  # fmt: skip
    index = np.arange(len(tokens), dtype=np.int64)
    inputs, labels = make_masker(spec)(tokens, index, np.zeros_like(index), 5, doc_ids=docs)
    chosen = labels != -100
    special = np.isin(tokens, specials)
    assert tokens.shape[0] > 800 and chosen.sum() > 12_000  # saw real work
    assert not (chosen & special).any()
    share = chosen.sum() / (~special).sum()
    assert abs(share - 0.15) < 0.01, share  # ~100 K maskable tokens: standard error ~0.002
    masked = chosen & (inputs == spec.mask_id)
    kept = chosen & (inputs == tokens)
    random = chosen & ~masked & ~kept
    n = chosen.sum()
    assert abs(masked.sum() / n - 0.8) < 0.03 and abs(random.sum() / n - 0.1) < 0.025
    assert not np.isin(inputs[random], specials).any() and inputs.max() < size
    # Words, read from the pieces themselves: every word is all chosen or not at all, and
    # all [MASK], all kept or all random.
    rule = table.rule.kind
    pieces = [tok.id_to_token(i) or "" for i in range(size)]
    for r in range(0, len(tokens), 7):
        row, word = tokens[r], [0]
        for i in range(1, 129):
            ends = i == 128 or row[i] in specials or row[i - 1] in specials
            ends = ends or docs[r, i] != docs[r, i - 1] or begins_word(rule, pieces[row[i]])
            if not ends:
                word.append(i)
                continue
            assert len(set(chosen[r, word])) == 1, (r, word)
            assert len(set(masked[r, word])) == 1 and len(set(kept[r, word])) == 1
            word = [i]
    words_per_token = sum(table.arrays()[0][tokens[~special]]) / (~special).sum()
    assert 0.5 < words_per_token < 0.95  # continuation pieces exist: words differ from tokens


def test_ngram_spans_are_longer_than_words_and_the_record_says_so() -> None:
    tokens, docs, tok = framed_blocks(BERT, 400)
    parsed = json.loads((BERT / "tokenizer.json").read_text())
    table = build_word_table(parsed, tok.get_vocab_size())
    base = {"mask_id": 103, "vocab_size": tok.get_vocab_size(), "words": table,
            "special_ids": (0, 100, 101, 102, 103)}  # fmt: skip
    index = np.arange(len(tokens), dtype=np.int64)

    def runs(strategy: str) -> float:
        masker = make_masker(MaskingSpec(strategy=strategy, **base))
        words = {} if strategy == "token" else {"doc_ids": docs}
        _, labels = masker(tokens, index, np.zeros_like(index), 1, **words)
        chosen = (labels != -100).ravel()
        starts = np.flatnonzero(chosen & ~np.append(False, chosen[:-1]))
        return chosen.sum() / starts.size  # mean length of a masked run, in tokens

    assert runs("ngram") > 1.3 * runs("whole-word") > 1.3 * runs("token")
    record = describe_masking(MaskingSpec(strategy="ngram", **base))
    assert record["decided"] == "per word" and record["word_rule"]["rule"] == "wordpiece"
    assert record["ngram_probabilities"] == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    assert ngram_probabilities(1) == [1.0]


def test_collator_masks_words_the_same_from_batches_and_examples() -> None:
    torch = pytest.importorskip("torch")
    _, table, size = small_vocab("metaspace")
    spec = spec_for(table, size, "ngram", probability=0.4)
    tokens = np.random.default_rng(3).integers(4, size - 1, size=(4, 32), dtype=np.uint16)
    docs = np.zeros((4, 32), dtype=np.int32)
    docs[:, 20:] = 1
    index = np.array([3, 9, 4, 1], dtype=np.int64)
    collator = MLMCollator(spec, seed=2)
    fast = collator(BlockBatch(tokens=tokens, block_index=index, epoch=np.zeros(4, np.int64),
                               doc_ids=docs))  # fmt: skip
    slow = collator([{"input_ids": tokens[i], "block_index": int(index[i]), "doc_ids": docs[i]}
                     for i in range(4)])  # fmt: skip
    assert set(fast) == {"input_ids", "labels"}  # no attention mask unless --doc-attention
    assert torch.equal(fast["labels"], slow["labels"]) and (fast["labels"] != -100).any()
    assert torch.equal(fast["input_ids"], slow["input_ids"])


def test_the_dataset_hands_over_document_starts_as_positions(shards: str) -> None:
    from pipeline.train.dataset import BlockDataset
    from pipeline.train.word_starts import document_starts

    data = BlockDataset(shards, "train", with_doc_ids=True, with_doc_starts=True)
    length = data.block_size
    keys = [*range(5, 4000, 97), 3000 + len(data)]  # across record batches, one of epoch 1
    batch = data[keys]
    from_ids = set(np.flatnonzero(document_starts(batch.doc_ids)).tolist())
    given = set(batch.doc_starts.tolist())
    assert len(given) > len(keys) and given <= from_ids  # saw real starts
    assert from_ids - given <= set(range(0, len(keys) * length, length))  # row starts only
    example = data[keys[2]]
    assert example["doc_starts"].tolist() == sorted(
        p - 2 * length for p in given if 2 * length <= p < 3 * length
    )
    words = build_word_table(json.loads((BERT / "tokenizer.json").read_text()), 30_522)
    spec = MaskingSpec.from_manifest(data.tokenizer, strategy="ngram", words=words)
    masker = make_masker(spec)
    args = (batch.tokens, batch.block_index, batch.epoch, 3)
    by_ids, by_starts = (
        masker(*args, doc_ids=batch.doc_ids),
        masker(*args, doc_starts=batch.doc_starts),
    )
    assert np.array_equal(by_ids[1], by_starts[1]) and np.array_equal(by_ids[0], by_starts[0])
