"""`pipeline verify`: a clean output passes; each kind of damage to a copy is found and named,
locally and on an S3-compatible store (moto on loopback)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.commands.verification import check_output, verify_output
from pipeline.core.packing import Blocks
from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.manifest import load_manifest
from pipeline.format.shards import ShardReader, ShardWriter
from tests.conftest import upload_folder


@pytest.fixture
def out(bert_output: Path, tmp_path: Path) -> Path:
    """A private copy of the session's real output, free to damage."""
    copy = tmp_path / "out"
    shutil.copytree(bert_output, copy)
    return copy


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _write_manifest(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_shard(out: Path, file: str, bad_id: int | None = None, **meta: object) -> None:
    """Rewrite a shard with other metadata or one token id changed, and record its new sha256
    and size in the manifest and sidecar, so that only the deliberate change is wrong."""
    reader = ShardReader(str(out / file))
    blocks = reader.read_all()
    tokens = blocks.tokens.astype("uint32")
    if bad_id is not None:
        tokens[len(tokens) // 2, 5] = bad_id
    writer = ShardWriter(str(out / file), dataclasses.replace(reader.meta, **meta), 2048, 3)
    writer.write(Blocks(tokens, blocks.start_values, blocks.start_offsets))
    info = writer.close()
    manifest = _manifest(out)
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            if shard["file"] == file:
                shard.update(sha256=info.sha256, num_bytes=info.num_bytes)
        entry["num_bytes"] = sum(s["num_bytes"] for s in entry["shards"])
    _write_manifest(out, manifest)
    car_path = out / file.replace(".arrow", ".json")
    car = json.loads(car_path.read_text())
    car.update(sha256=info.sha256, num_bytes=info.num_bytes)
    car_path.write_text(json.dumps(car))


def test_clean_output_passes(bert_output: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = load_manifest(str(bert_output))
    shards = [s for e in manifest.splits.values() for s in e.shards]
    result = check_output(str(bert_output))
    assert result.problems == []
    assert result.num_shards == len(shards) == 20
    assert result.num_blocks == sum(s.num_blocks for s in shards) > 0
    assert result.bytes_read == sum(s.num_bytes for s in shards) > 0
    assert verify_output(str(bert_output), full=False) == []
    assert cli.main(["verify", str(bert_output)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"verify {bert_output}: ok; 20 shards, {result.num_blocks:,} blocks")


@pytest.mark.parametrize(
    ("file", "where"),
    [
        ("train/shard-00003.arrow", 0.5),  # inside a compressed record batch
        ("validation/shard-00009.arrow", 0.5),  # the small tail shard
        ("train/shard-00000.arrow", 0.0),  # the magic bytes
        ("train/shard-00001.arrow", -1),  # the last byte (footer magic)
    ],
)
def test_a_flipped_byte_is_found(
    out: Path, file: str, where: float, capsys: pytest.CaptureFixture
) -> None:
    path = out / file
    size = path.stat().st_size
    _flip(path, size - 1 if where == -1 else int(size * where))
    problems = verify_output(str(out))
    assert any(p.startswith(f"{file}: altered: sha256") for p in problems), problems
    assert all(p.startswith(file) for p in problems), problems
    assert cli.main(["verify", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{file}: altered") and "FAILED" in lines[-1]


def test_the_cheap_check_does_not_hash(out: Path) -> None:
    """`full=False` (what the trainer runs) trades the sha256 for speed: a flipped byte inside
    a record batch passes it, a full verify finds it."""
    _flip(out / "train/shard-00002.arrow", 50_000)
    assert verify_output(str(out), full=False) == []
    assert verify_output(str(out), full=True) != []


@pytest.mark.parametrize("full", [True, False])
def test_missing_truncated_and_extra_files(out: Path, full: bool) -> None:
    (out / "train/shard-00004.arrow").unlink()
    path = out / "validation/shard-00001.arrow"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-1000])
    (out / "validation/notes.txt").write_text("not part of the dataset")
    shutil.copy(out / "train/shard-00000.arrow", out / "train/shard-00099.arrow")
    problems = verify_output(str(out), full=full)
    assert problems == [
        "train/shard-00004.arrow: missing (the manifest lists it); rerun the same `pipeline run` "
        "command to rebuild it",
        f"validation/shard-00001.arrow: truncated: expected {size:,} bytes, found "
        f"{size - 1000:,}; rerun the same `pipeline run` command to rebuild it",
        "train/shard-00099.arrow: extra file the manifest does not list; remove it",
        "validation/notes.txt: extra file the manifest does not list; remove it",
    ]


def test_altered_and_missing_sidecars(out: Path) -> None:
    car = json.loads((out / "train/shard-00001.json").read_text())
    blocks = car["num_blocks"]
    car["num_blocks"] += 1
    (out / "train/shard-00001.json").write_text(json.dumps(car))
    (out / "validation/shard-00002.json").unlink()
    problems = verify_output(str(out))
    assert any(
        p.startswith(
            f"train/shard-00001.json: num_blocks is {blocks + 1}, the manifest says {blocks}"
        )
        for p in problems
    ), problems
    assert any(p.startswith("validation/shard-00002.json: missing or not JSON") for p in problems)
    # The missing sidecar's ledger is absent from the sum, so the sums disagree too.
    assert any("validation: the sidecars' ledgers do not add up" in p for p in problems)
    assert len(problems) == 3


@pytest.mark.parametrize(("text", "found"), [("null", "NoneType"), ("[]", "list")])
def test_a_null_or_list_sidecar_is_one_line_naming_it(out: Path, text: str, found: str) -> None:
    from pipeline.errors import DataError
    from pipeline.format.sidecars import Sidecar

    with pytest.raises(DataError, match=rf"expected a JSON object as the sidecar, found {found}"):
        Sidecar.from_dict(json.loads(text))
    (out / "train/shard-00001.json").write_text(text)
    problems = verify_output(str(out))
    assert problems[0] == (
        f"train/shard-00001.json: expected a JSON object as the sidecar, found {found} (the "
        "sidecar of train/shard-00001.arrow); delete it and rerun the same `pipeline run` command"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda m: m["splits"]["train"]["ledger"].update(num_dropped_tokens=1),
            "train: manifest.json ledger: tokens in",
        ),
        (
            lambda m: m["splits"]["train"].update(num_blocks=3),
            "train: manifest.json ledger block tokens",
        ),
        (lambda m: m["splits"]["validation"]["shards"][0].update(num_blocks=1), "holds 84 blocks"),
        (
            lambda m: m["splits"]["validation"]["shards"][3].update(num_doc_starts=0),
            "document starts",
        ),
    ],
    ids=["ledger", "split-blocks", "shard-blocks", "shard-doc-starts"],
)
def test_manifest_edits_are_found(out: Path, change: Callable[[dict], None], expected: str) -> None:
    manifest = _manifest(out)
    change(manifest)
    _write_manifest(out, manifest)
    problems = verify_output(str(out))
    assert any(expected in p for p in problems), problems


def test_shard_metadata_must_match_the_manifest(out: Path) -> None:
    _rewrite_shard(out, "train/shard-00002.arrow", tokenizer_sha256="0" * 64, packing="concat")
    for full in (True, False):  # metadata is part of the cheap check too
        problems = verify_output(str(out), full=full)
        assert [p.split(" is ")[0] for p in problems] == [
            "train/shard-00002.arrow: metadata packing",
            "train/shard-00002.arrow: metadata tokenizer_sha256",
        ], problems


def test_token_ids_must_be_below_the_vocabulary(out: Path) -> None:
    _rewrite_shard(out, "validation/shard-00005.arrow", bad_id=40_000)
    assert verify_output(str(out)) == [
        "validation/shard-00005.arrow: token id 40,000 >= vocabulary size 30,522; rerun the "
        "same `pipeline run` command to rebuild it"
    ]


def test_tokenizer_must_be_the_runs(out: Path) -> None:
    data = json.loads((out / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["[unused0]x"] = vocab.pop("[unused0]")
    (out / "tokenizer.json").write_text(json.dumps(data))
    problems = verify_output(str(out))
    assert len(problems) == 1 and problems[0].startswith("tokenizer.json: canonical sha256")
    (out / "tokenizer.json").unlink()
    assert verify_output(str(out), full=False)[0].startswith("tokenizer.json: missing")


def test_no_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataError, match="expected the manifest of a finished run, found none"):
        verify_output(str(tmp_path))
    assert cli.main(["verify", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "manifest" in report["problems"][0]


def test_damaged_manifest_layout(out: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(out)
    del manifest["splits"]["train"]["ledger"]
    _write_manifest(out, manifest)
    message = (
        "manifest.json: expected splits.train.ledger to be an object, found it missing; "
        "rerun the same `pipeline run` command to rewrite the manifest"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        verify_output(str(out))
    assert cli.main(["inspect", str(out)]) == 1
    assert capsys.readouterr().err.endswith(message + "\n")


def test_json_report(out: Path, capsys: pytest.CaptureFixture) -> None:
    (out / "train/shard-00006.arrow").unlink()
    assert cli.main(["verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["num_shards"] == 20 and report["bytes_read"] > 0
    assert [p.split(":")[0] for p in report["problems"]] == ["train/shard-00006.arrow"]


# S3 -------------------------------------------------------------------------------------------


@pytest.fixture
def s3_output(bert_output: Path, s3_bucket: str) -> str:
    """The real output uploaded to a moto S3 server on loopback (fake credentials)."""
    upload_folder(bert_output, f"s3://{s3_bucket}/out")
    return f"s3://{s3_bucket}/out"


def test_verify_on_s3(s3_output: str) -> None:
    result = check_output(s3_output)
    assert result.problems == [] and result.num_blocks > 0 and result.bytes_read > 0
    assert verify_output(s3_output, full=False) == []
    shard = f"{s3_output}/train/shard-00002.arrow"
    data = bytearray(storage.read_bytes(shard))
    data[len(data) // 2] ^= 0x01
    storage.write_bytes_atomic(shard, bytes(data))
    storage.remove(f"{s3_output}/validation/shard-00004.arrow")
    storage.write_bytes_atomic(f"{s3_output}/validation/junk.bin", b"x")
    problems = verify_output(s3_output)
    assert [p.split(":")[0] for p in problems] == [
        "train/shard-00002.arrow",
        "validation/shard-00004.arrow",
        "validation/junk.bin",
    ]
    assert "altered" in problems[0] and "missing" in problems[1] and "extra" in problems[2]
    assert len(verify_output(s3_output, full=False)) == 2  # no hashing: the flip goes unseen
