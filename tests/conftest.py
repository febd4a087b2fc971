"""Shared fixtures: paths to ../shared test material and small real pipeline outputs."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import settings

from pipeline.format import storage
from pipeline.run.config import RunConfig
from pipeline.run.runner import LocalExecutor, run_pipeline

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DICTWIKI = SHARED / "corpus" / "dictwiki"
BERT = SHARED / "tokenizers" / "bert-base-uncased"
UNIGRAM = SHARED / "tokenizers" / "unigram-128k"
TOKENIZERS = {"bert": BERT, "unigram": UNIGRAM}
SMALL_UNIT = 512 * 1024  # dictwiki (6.3 MB of text) -> 9 work units

# The machines are shared and noisy: time limits per example would make property tests flaky.
settings.register_profile("project", deadline=None, print_blob=True)
settings.load_profile("project")


# A test needs ../shared when it is marked `shared`, uses one of these fixtures (directly or
# through another) or names one of these paths, in its body, parameters, fixtures or helpers.
DATA_FIXTURES = frozenset({"dictwiki", "dictwiki_one_file", "bert_output"})
DATA_NAMES = frozenset({"SHARED", "DICTWIKI", "BERT", "UNIGRAM", "TOKENIZERS"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ../shared, skip only the tests that need it (`.ci/run` refuses to run then)."""
    if DICTWIKI.is_dir():
        return
    skip = pytest.mark.skip(reason=f"test material missing: {SHARED}")
    for item in items:
        if needs_shared(item):
            item.add_marker(skip)


def needs_shared(item: pytest.Item) -> bool:
    if item.get_closest_marker("shared") or DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    module = getattr(item, "module", None)
    callspec = getattr(item, "callspec", None)
    params = list(callspec.params.values()) if callspec else []
    info = getattr(item, "_fixtureinfo", None)
    fixtures = [d.func for defs in (info.name2fixturedefs.values() if info else ()) for d in defs]
    found = [function, *fixtures, *(p for p in params if callable(p))]
    if any(isinstance(p, Path) and SHARED in p.parents for p in params):
        return True
    scope = vars(module) if module else {}
    return any(_names_shared(f, {**getattr(f, "__globals__", {}), **scope}, set()) for f in found)


def _names_shared(function: object, scope: dict, seen: set[int]) -> bool:
    """Whether `function`, a function of its module it calls, or a nested one names DATA_NAMES."""
    code = getattr(function, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    codes = [code]
    while codes:
        current = codes.pop()
        if DATA_NAMES & set(current.co_names):
            return True
        codes += [c for c in current.co_consts if hasattr(c, "co_names")]
        helpers = [scope.get(name) for name in current.co_names]
        if any(_names_shared(h, scope, seen) for h in helpers if callable(h)):
            return True
    return False


@pytest.fixture(scope="session")
def dictwiki() -> Path:
    return DICTWIKI


@pytest.fixture(scope="session")
def dictwiki_one_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of one dictwiki shard (3,830 articles) for faster end-to-end tests."""
    folder = tmp_path_factory.mktemp("dictwiki-one")
    shutil.copy(DICTWIKI / "train-00000-of-00004.parquet", folder)
    return folder


def dictwiki_slice(folder: Path, shard: int, rows: int, name: str = "a.parquet") -> Path:
    """`folder` holding the first `rows` articles of dictwiki shard `shard` as one parquet file:
    a small corpus for tests that run the pipeline and then something slower."""
    source = DICTWIKI / f"train-{shard:05d}-of-00004.parquet"
    pq.write_table(pq.read_table(source).slice(0, rows), folder / name)
    return folder


def make_config(inputs: Path | str, tokenizer: Path, output: Path, **kw: object) -> RunConfig:
    kw.setdefault("unit_bytes", SMALL_UNIT)
    return RunConfig(inputs=(str(inputs),), tokenizer=str(tokenizer), output=str(output), **kw)


@pytest.fixture(scope="session")
def bert_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real framed run over all of dictwiki with the BERT tokenizer, shared read-only."""
    out = tmp_path_factory.mktemp("bert-out") / "out"
    run_pipeline(make_config(DICTWIKI, BERT, out), LocalExecutor(), progress_stream=None)
    return out


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API on loopback: moto's server mode, started and stopped here."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(
    s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """A fresh bucket on the loopback S3 server, with fake credentials in the environment."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        storage.ENDPOINT_ENV: s3_server,
    }.items():
        monkeypatch.setenv(key, value)
    name = "b-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def upload_folder(folder: Path, uri: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.write_bytes_atomic(
                f"{uri}/{path.relative_to(folder).as_posix()}", path.read_bytes()
            )


def damage_a_data_page(src: Path, dst: Path, row_group: int = 1) -> None:
    """Copy a parquet file with garbage over one row group's text page header (footer intact)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(src).metadata
    text = meta.schema.to_arrow_schema().get_field_index("text")
    offset = meta.row_group(row_group).column(text).data_page_offset
    data = bytearray(src.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    dst.write_bytes(bytes(data))
