"""`pipeline train --data s3://...`: the dataset is cached locally, checked, and trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.train.dataset_cache import CACHE_ENV
from pipeline.train.loop import main
from tests.conftest import upload_folder
from tests.train.test_loop import QUICK, records


def test_training_reads_an_s3_dataset_through_the_cache(
    shards: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(Path(shards), uri)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    run = tmp_path / "run"
    argv = ["--data", uri, "--output", str(run), "--model", "tiny-bert", "--max-steps", "3",
            *QUICK]  # fmt: skip
    assert main(argv) == 0
    assert "bytes fetched" in capsys.readouterr().out
    assert (tmp_path / "cache" / s3_bucket / "shards" / "manifest.json").is_file()
    last = records(run, "train")[-1]
    assert last["step"] == 3 and 0 < last["loss"] < 20 and last["tokens_per_s"] > 0
