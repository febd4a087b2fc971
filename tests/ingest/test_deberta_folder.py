"""The seed's setting: a DeBERTa-v3 folder as downloaded (spm.model, tokenizer_config.json,
config.json; no tokenizer.json). A real SentencePiece unigram model is trained here, in
DeBERTa-v3's layout ([PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, [MASK] added after the pieces)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.format.shards import ShardReader
from pipeline.ingest.tokenization import describe_tokenizer, load_tokenizer
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import dictwiki_slice, make_config

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

VOCAB = 3000  # pieces; [MASK] becomes id 3000, as 128000 in DeBERTa-v3-large


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dictwiki_slice(tmp_path_factory.mktemp("deberta-in"), 1, 400)


@pytest.fixture(scope="module")
def deberta_folder(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    folder = tmp_path_factory.mktemp("deberta-v3")
    texts = pq.read_table(corpus / "a.parquet").column("text").to_pylist()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]",
        eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    (folder / "spm.model").write_bytes(model.getvalue())
    special = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]",
               "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **special, "do_lower_case": False, "split_by_punct": False, "vocab_type": "spm",
        "tokenizer_class": "DebertaV2Tokenizer", "model_max_length": 512,
    }))  # fmt: skip
    (folder / "config.json").write_text(json.dumps({
        "model_type": "deberta-v2", "vocab_size": VOCAB + 1, "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512, "relative_attention": True,
        "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
        "max_relative_positions": -1,
    }))  # fmt: skip
    assert not (folder / "tokenizer.json").exists()
    return folder


def test_the_folder_loads_with_deberta_v3_ids(deberta_folder: Path) -> None:
    info = describe_tokenizer(load_tokenizer(str(deberta_folder)))
    assert info.special_ids == {"mask": VOCAB, "pad": 0, "unk": 3, "cls": 1, "sep": 2}
    assert info.prefix_ids == (1,) and info.suffix_ids == (2,) and info.vocab_size == VOCAB + 1


def test_concat_packing_holds_exactly_the_tokens_of_auto_tokenizer(
    tmp_path: Path, corpus: Path, deberta_folder: Path
) -> None:
    block = 64
    config = make_config(corpus, deberta_folder, tmp_path / "out", block_size=block,
                         packing="concat", validation_fraction=0.0, unit_bytes=1 << 30)  # fmt: skip
    result = run_pipeline(config, LocalExecutor(), progress_stream=None)
    hf = transformers.AutoTokenizer.from_pretrained(str(deberta_folder), use_fast=True)
    texts = pq.read_table(corpus / "a.parquet").column("text").to_pylist()
    want = np.concatenate(
        [hf(t)["input_ids"] for t in texts if t and not t.isspace()]
    ).astype(np.uint32)  # fmt: skip
    train = result.manifest.to_dict()["splits"]["train"]
    assert train["ledger"]["num_documents_packed"] == 400 and train["num_blocks"] > 100
    got = np.concatenate(
        [ShardReader(str(tmp_path / "out" / s["file"])).read_all().tokens.ravel()
         for s in train["shards"]]
    )  # fmt: skip
    assert got.size == train["num_blocks"] * block == want.size // block * block
    np.testing.assert_array_equal(got, want[: got.size])
    assert int(got.max()) < VOCAB and {1, 2} <= set(got[:block].tolist())
