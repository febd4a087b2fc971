"""Loading tokenizers, their identity and special tokens, and encoding as the recipe does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pipeline.errors import UsageError
from pipeline.ingest.tokenization import (
    DocumentEncoder,
    describe_tokenizer,
    load_tokenizer,
    split_long_text,
    widen_word_cache,
)
from tests.conftest import BERT, DICTWIKI, UNIGRAM


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    table = pq.read_table(DICTWIKI / "train-00003-of-00004.parquet", columns=["text"])
    return table.column("text").to_pylist()[::20]


@pytest.mark.parametrize(
    ("path", "dtype", "cls", "sep", "mask"),
    [(BERT, "uint16", 101, 102, 103), (UNIGRAM, "uint32", 1, 2, 128000)],
)
def test_describe_real_tokenizers(path: Path, dtype: str, cls: int, sep: int, mask: int) -> None:
    info = describe_tokenizer(load_tokenizer(str(path)))
    assert info.dtype == dtype
    assert info.prefix_ids == (cls,) and info.suffix_ids == (sep,)
    assert info.special_ids["mask"] == mask
    assert mask in info.all_special_ids and cls in info.all_special_ids
    assert len(info.sha256) == 64


def test_identity_ignores_baked_padding(tmp_path: Path) -> None:
    """BERT's tokenizer.json has padding/truncation baked in; the pipeline removes both, so the
    same vocabulary saved without them hashes the same."""
    tok = load_tokenizer(str(BERT))
    tok.save(str(tmp_path / "tokenizer.json"))
    raw = json.loads((BERT / "tokenizer.json").read_text())
    assert raw["padding"] is not None
    again = describe_tokenizer(load_tokenizer(str(tmp_path / "tokenizer.json")))
    assert again.sha256 == describe_tokenizer(tok).sha256
    assert load_tokenizer(str(BERT)).encode("hello").ids == [101, 7592, 102]


@pytest.mark.parametrize("path", [BERT, UNIGRAM])
def test_prefix_bare_suffix_equals_full_encoding(path: Path, sample_texts: list[str]) -> None:
    tok = load_tokenizer(str(path))
    info = describe_tokenizer(tok)
    encoder = DocumentEncoder(tok, info)
    ids, lengths = encoder.encode(sample_texts)
    offset = 0
    for text, n in zip(sample_texts, lengths, strict=True):
        full = tok.encode(text).ids
        assert full == [*info.prefix_ids, *ids[offset : offset + n].tolist(), *info.suffix_ids]
        offset += n
    assert offset == ids.size > 10_000


def _bpe_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, show_progress=False))
    return tok


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_a_wide_word_cache_gives_the_same_ids(kind: str, sample_texts: list[str]) -> None:
    """The cache only memoizes: no cache, the default 10,000 words and a million words (second
    pass: all hits) give the same ids."""
    js = load_tokenizer(str(UNIGRAM)) if kind == "unigram" else _bpe_tokenizer(sample_texts)
    js = js.to_str()
    results = []
    for words in (0, 10_000, 1_000_000):
        tok = Tokenizer.from_str(js)
        assert widen_word_cache(tok, words)
        for _ in range(2):
            encodings = tok.encode_batch_fast(sample_texts, add_special_tokens=False)
            results.append([e.ids for e in encodings])
    assert sum(map(len, results[0])) > 10_000
    assert all(r == results[0] for r in results)


def test_wordpiece_has_no_word_cache_and_is_left_alone() -> None:
    tok = load_tokenizer(str(BERT))
    assert not widen_word_cache(tok, 1_000_000)
    assert DocumentEncoder(tok, describe_tokenizer(tok)).encode(["hello"])[0].tolist() == [7592]


def test_long_documents_are_encoded_in_pieces_with_the_same_tokens() -> None:
    tok = load_tokenizer(str(BERT))
    encoder = DocumentEncoder(tok, describe_tokenizer(tok))
    text = "The quick brown fox jumps over the lazy dog. " * 60_000  # 2.7 M characters
    ids, lengths = encoder.encode([text, "short"])
    assert lengths.tolist()[1] == 1
    assert ids[: lengths[0]].tolist() == tok.encode(text, add_special_tokens=False).ids


@given(text=st.text(alphabet=st.sampled_from("ab \n"), max_size=200), size=st.integers(1, 30))
def test_split_long_text_joins_back(text: str, size: int) -> None:
    pieces = split_long_text(text, size)
    assert "".join(pieces) == text
    assert all(len(p) <= size for p in pieces)


@pytest.mark.parametrize(
    ("module", "package"),
    [("transformers", "transformers"), ("sentencepiece", "sentencepiece"),
     ("google.protobuf", "protobuf")],
)  # fmt: skip
def test_sentencepiece_folder_without_a_converter_names_the_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    """Without sentencepiece or protobuf transformers says "tiktoken is required": not that."""
    (tmp_path / "spm.model").write_bytes(b"\x00not a real model")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(UsageError, match=rf"found {package} missing; run `pip install '.\[spm\]'"):
        load_tokenizer(str(tmp_path))


def test_sentencepiece_folder_that_does_not_convert(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "spm.model").write_bytes(b"\x00not a real model")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "DebertaV2Tokenizer"}')
    with pytest.raises(UsageError, match=r"expected a SentencePiece model that transformers can"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing", r"missing: expected a tokenizer.json or a model folder"),
        (lambda p: _write(p / "x.json", "{not json"), r"x.json: expected a Hugging Face tokenizer"),
        (
            lambda p: (p / "empty").mkdir() or p / "empty",
            r"expected tokenizer.json \(or a Sentence",
        ),
    ],
)
def test_bad_tokenizer_paths(tmp_path: Path, make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=match):
        load_tokenizer(str(make(tmp_path)))


def test_uint16_refused_for_a_large_vocabulary() -> None:
    with pytest.raises(UsageError, match=r"--dtype uint16 .* found 128001; use --dtype uint32"):
        describe_tokenizer(load_tokenizer(str(UNIGRAM)), "uint16", str(UNIGRAM))


def test_folder_with_tokenizer_json_loads(tmp_path: Path) -> None:
    shutil.copytree(UNIGRAM, tmp_path / "model")
    assert describe_tokenizer(load_tokenizer(str(tmp_path / "model"))).vocab_size == 128_001


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
