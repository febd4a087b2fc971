"""The manifest: the commit marker of a run, its per-split and per-shard records, typed.

`OUT/manifest.json` is written last and atomically; a folder without it is not a dataset.
It lists every shard with its size and sha256, and per split the sum of the sidecars' ledgers
(format/sidecars.py, core/ledger.py). Layout: schemas/manifest.schema.json.
The manifest is read once, into typed records (`Manifest.from_dict`): every reader (verify,
inspect, the trainer, the dataset cache) uses attributes, and a damaged file fails here with
one line naming the field, not with a `KeyError` somewhere downstream. `to_dict` gives back
the keys and values of the layout exactly as read, so a manifest written before these records
existed loads, and the bytes written are the same as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline import FORMAT_VERSION
from pipeline.core.ledger import Ledger
from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.paths import MANIFEST_NAME, sidecar_of
from pipeline.format.records import Fields, read_json, write_json_atomic
from pipeline.format.sidecars import Sidecar

REWRITE = "rerun the same `pipeline run` command to rewrite the manifest"


@dataclass(frozen=True, kw_only=True)
class ShardRecord:
    """One shard as the manifest lists it."""

    file: str  # relative to OUT: "<split>/shard-NNNNN.arrow"
    sha256: str
    num_bytes: int
    num_blocks: int
    num_doc_starts: int

    @property
    def sidecar_file(self) -> str:
        """The sidecar beside the shard, relative to OUT."""
        return sidecar_of(self.file)

    def uri(self, output: str) -> str:
        return storage.join(output, *self.file.split("/"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, f: Fields) -> ShardRecord:
        return cls(
            file=f.text("file"),
            sha256=f.text("sha256"),
            num_bytes=f.integer("num_bytes"),
            num_blocks=f.integer("num_blocks"),
            num_doc_starts=f.integer("num_doc_starts"),
        )


@dataclass(frozen=True, kw_only=True)
class SplitRecord:
    """One split: its totals, its ledger (the sum of its sidecars') and its shards in order."""

    num_blocks: int
    num_tokens: int
    num_bytes: int
    ledger: Ledger
    shards: tuple[ShardRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_blocks": self.num_blocks,
            "num_tokens": self.num_tokens,
            "num_bytes": self.num_bytes,
            "ledger": self.ledger.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
        }

    @classmethod
    def read(cls, f: Fields) -> SplitRecord:
        return cls(
            num_blocks=f.integer("num_blocks"),
            num_tokens=f.integer("num_tokens"),
            num_bytes=f.integer("num_bytes"),
            ledger=_read_ledger(f.record("ledger")),
            shards=tuple(ShardRecord.read(s) for s in f.objects("shards")),
        )


@dataclass(frozen=True, kw_only=True)
class TokenizerRecord:
    """The run's tokenizer (OUT/tokenizer.json) as the manifest describes it."""

    file: str
    sha256: str  # of its canonical JSON: the tokenizer's identity
    vocab_size: int
    dtype: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    special_ids: dict[str, int | None]  # cls, sep, pad, mask, unk
    all_special_ids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def read(cls, f: Fields) -> TokenizerRecord:
        specials = f.record("special_ids")
        return cls(
            file=f.text("file"),
            sha256=f.text("sha256"),
            vocab_size=f.integer("vocab_size"),
            dtype=f.choice("dtype", ("uint16", "uint32")),
            prefix_ids=f.integers("prefix_ids"),
            suffix_ids=f.integers("suffix_ids"),
            special_ids={k: specials.integer(k, nullable=True) for k in specials.data},
            all_special_ids=f.integers("all_special_ids"),
        )


@dataclass(frozen=True, kw_only=True)
class InputRecord:
    path: str
    num_bytes: int
    num_rows: int | None  # None only while a run counts JSON lines rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, f: Fields) -> InputRecord:
        num_rows = f.integer("num_rows", nullable=True)
        return cls(path=f.text("path"), num_bytes=f.integer("num_bytes"), num_rows=num_rows)


@dataclass(frozen=True, kw_only=True)
class SkippedFile:
    path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, f: Fields) -> SkippedFile:
        return cls(path=f.text("path"), reason=f.text("reason"))


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """OUT/manifest.json, typed. `config` is the run's `RunConfig` without `output`
    (run/config.py); the fields readers need are checked on reading and named below."""

    format_version: int
    pipeline_version: str
    config: dict[str, Any]
    tokenizer: TokenizerRecord
    inputs: tuple[InputRecord, ...]
    skipped_files: tuple[SkippedFile, ...]
    num_units: int
    splits: dict[str, SplitRecord]  # train, validation

    @property
    def block_size(self) -> int:
        return int(self.config["block_size"])

    @property
    def batch_blocks(self) -> int:
        return int(self.config["batch_blocks"])

    @property
    def packing(self) -> str:
        return str(self.config["packing"])

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "pipeline_version": self.pipeline_version,
            "config": self.config,
            "tokenizer": self.tokenizer.to_dict(),
            "inputs": [i.to_dict() for i in self.inputs],
            "skipped_files": [s.to_dict() for s in self.skipped_files],
            "num_units": self.num_units,
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: object, source: str = MANIFEST_NAME) -> Manifest:
        """Raises one DataError naming `source`, the field, what was expected and found."""
        f = Fields(data, "", source, REWRITE)
        version = f.integer("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"{source}: expected format_version {FORMAT_VERSION}, found {version}; rerun "
                "`pipeline run` with this version"
            )
        config = f.record("config")
        for key in ("block_size", "batch_blocks"):
            config.integer(key)
        config.choice("packing", ("framed", "concat"))
        splits = f.record("splits")
        return cls(
            format_version=version,
            pipeline_version=f.text("pipeline_version"),
            config=config.data,
            tokenizer=TokenizerRecord.read(f.record("tokenizer")),
            inputs=tuple(InputRecord.read(i) for i in f.objects("inputs")),
            skipped_files=tuple(SkippedFile.read(s) for s in f.objects("skipped_files")),
            num_units=f.integer("num_units"),
            splits={name: SplitRecord.read(splits.record(name)) for name in splits.data},
        )


def _read_ledger(f: Fields) -> Ledger:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Ledger):
        if field.name == "skipped":
            reasons = f.record("skipped")
            values["skipped"] = {k: reasons.integer(k) for k in reasons.data}
        else:
            values[field.name] = f.integer(field.name)
    return Ledger(**values)


def build_manifest(
    *,
    config: dict[str, Any],
    tokenizer: TokenizerRecord,
    inputs: list[InputRecord],
    skipped_files: list[SkippedFile],
    num_units: int,
    sidecars: dict[str, list[Sidecar]],
    pipeline_version: str,
) -> Manifest:
    splits = {}
    for split, cars in sidecars.items():
        ledger = Ledger()
        for car in cars:
            ledger.add(car.ledger)
        shards = tuple(
            ShardRecord(
                file=f"{split}/{c.shard}",
                sha256=c.sha256,
                num_bytes=c.num_bytes,
                num_blocks=c.num_blocks,
                num_doc_starts=c.num_doc_starts,
            )
            for c in cars
        )
        splits[split] = SplitRecord(
            num_blocks=sum(c.num_blocks for c in cars),
            num_tokens=ledger.num_block_tokens,
            num_bytes=sum(c.num_bytes for c in cars),
            ledger=ledger,
            shards=shards,
        )
    return Manifest(
        format_version=FORMAT_VERSION,
        pipeline_version=pipeline_version,
        config=config,
        tokenizer=tokenizer,
        inputs=tuple(inputs),
        skipped_files=tuple(skipped_files),
        num_units=num_units,
        splits=splits,
    )


def write_manifest(output: str, manifest: Manifest) -> None:
    write_json_atomic(storage.join(output, MANIFEST_NAME), manifest.to_dict())


def load_manifest(output: str) -> Manifest:
    uri = storage.join(output, MANIFEST_NAME)
    if not storage.exists(uri):
        raise DataError(
            f"{uri}: expected the manifest of a finished run, found none; the run did not "
            "finish (rerun the same `pipeline run` command to resume) or this is not an output"
        )
    return Manifest.from_dict(read_json(uri), uri)
