"""`--packing concat` gives the token stream of the recipe users run today, block for block:
`datasets.load_dataset("parquet")` + `map(tokenizer(text))` + `group_texts`."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.format.manifest import load_manifest
from pipeline.format.shards import ShardReader
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import BERT, make_config

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
BLOCK = 128


def _group_texts(examples: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
    """The recipe's group_texts (run_mlm.py), with chain() instead of the quadratic sum()."""
    concatenated = {k: list(itertools.chain.from_iterable(examples[k])) for k in examples}
    total = (len(concatenated["input_ids"]) // BLOCK) * BLOCK
    return {k: [t[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}


def _recipe_blocks(parquet: Path, cache: Path, group_batch: int | None) -> np.ndarray:
    ds = datasets.load_dataset(
        "parquet", data_files=str(parquet), split="train", cache_dir=str(cache)
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(BERT))
    tokenized = ds.map(
        lambda b: {"input_ids": tok(b["text"])["input_ids"]},
        batched=True,
        remove_columns=ds.column_names,
    )
    grouped = tokenized.map(_group_texts, batched=True, batch_size=group_batch or len(tokenized))
    return np.array(grouped["input_ids"], dtype=np.int64)


def _our_blocks(out: Path) -> np.ndarray:
    manifest = load_manifest(str(out))
    parts = [
        ShardReader(str(out / s.file)).read_all().tokens for s in manifest.splits["train"].shards
    ]
    return np.concatenate(parts).astype(np.int64)


@pytest.mark.slow
def test_concat_equals_recipe_block_for_block(
    tmp_path: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "out"
    # One unit and no validation split: one continuous stream, like the recipe's single batch.
    config = make_config(
        dictwiki_one_file,
        BERT,
        out,
        packing="concat",
        validation_fraction=0.0,
        unit_bytes=1 << 40,
    )
    result = run_pipeline(config, LocalExecutor(), progress_stream=None)
    ours = _our_blocks(out)
    parquet = next(dictwiki_one_file.glob("*.parquet"))
    expected = _recipe_blocks(parquet, tmp_path / "hf-cache", group_batch=None)
    assert ours.shape[0] > 2500, "saw real work"
    assert ours.shape == expected.shape
    assert (ours == expected).all()

    # What the recipe loses at its default 1,000-document batches, and what we lose.
    default = _recipe_blocks(parquet, tmp_path / "hf-cache", group_batch=1000)
    ledger = result.manifest.splits["train"].ledger
    total = ledger.num_document_tokens + ledger.num_special_tokens
    assert ledger.num_dropped_tokens < BLOCK
    # 3,830 documents = 4 recipe batches, each dropping its own remainder (235 tokens here);
    # the pipeline drops one remainder for the whole split.
    assert total - default.size > ledger.num_dropped_tokens
