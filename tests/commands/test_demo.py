"""`pipeline demo` and its inputs: the stdlib corpus, the WordPiece trainer, the demo run."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commands import cli, demo
from pipeline.commands.sample_corpus import (
    DENY,
    SPECIAL_TOKENS,
    article_text,
    build_sample_corpus,
    collect_in_child,
    train_wordpiece,
)
from pipeline.errors import DataError, UsageError
from pipeline.format.manifest import load_manifest
from pipeline.ingest.tokenization import describe_tokenizer, load_tokenizer

COLUMNS = ["id", "url", "title", "text"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_sample_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def wordpiece(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_wordpiece(corpus, tmp_path_factory.mktemp("tok") / "tokenizer.json", 2000)


def test_corpus_has_the_wikipedia_schema_and_several_row_groups(corpus: list[Path]) -> None:
    assert [p.name for p in corpus] == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    tables = []
    for path in corpus:
        f = pq.ParquetFile(path)
        assert f.schema_arrow.names == COLUMNS
        assert all(f.schema_arrow.field(c).type == pa.string() for c in COLUMNS)
        assert f.metadata.num_row_groups >= 3
        assert f.metadata.row_group(0).column(3).compression == "ZSTD"
        tables.append(f.read())
    table = pa.concat_tables(tables).to_pydict()
    num_rows = len(table["id"])
    assert num_rows > 200  # ~310 modules with text on CPython 3.11
    assert table["id"] == [str(i) for i in range(num_rows)]
    assert table["title"] == sorted(table["title"]) and len(set(table["title"])) == num_rows
    assert all(t.strip() for t in table["text"])
    assert sum(len(t) for t in table["text"]) > 800_000  # enough for several 256 KiB units
    assert all(
        u == f"https://docs.python.org/3/library/{t}.html"
        for u, t in zip(table["url"], table["title"], strict=True)
    )
    json_text = table["text"][table["title"].index("json")]
    assert json_text.startswith("JSON (JavaScript Object Notation)")
    assert "\n\ndumps\nSerialize ``obj`` to a JSON formatted ``str``." in json_text


def test_corpus_is_byte_identical_across_builds(corpus: list[Path], tmp_path: Path) -> None:
    # Each build reads the docstrings in a fresh interpreter with its own hash seed, and this
    # process has imported pyarrow and pytest: neither may change a byte.
    again = build_sample_corpus(tmp_path)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in corpus]


def test_titles_leave_out_denied_private_and_main_modules(corpus: list[Path]) -> None:
    # The titles are module_names() as the child interpreter saw them, less modules without
    # text; reading them here keeps this process from importing ~360 stdlib modules.
    names = [t for p in corpus for t in pq.read_table(p, columns=["title"])["title"].to_pylist()]
    assert {"json", "json.decoder", "email.mime.text", "sys", "builtins"} <= set(names)
    assert not DENY & {n.split(".")[0] for n in names}
    assert not {"antigravity", "this", "tkinter", "idlelib", "test", "lib2to3"} & set(names)
    assert not [n for n in names if any(part.startswith("_") for part in n.split("."))]
    assert names == sorted(names)


def test_article_text_takes_public_docstrings_once() -> None:
    module = types.ModuleType("fake", "Fake module.\n\n    Indented second paragraph.")

    def helper() -> None:
        """Help.

        More help."""

    def _private() -> None:
        """Hidden."""

    class Thing:
        """A thing."""

        def run(self) -> None:
            """Run it."""

        def _skip(self) -> None:
            """Not public."""

    for obj in (helper, _private, Thing):
        obj.__module__ = "fake"
        setattr(module, obj.__name__, obj)
    module.shared = len  # a re-export from elsewhere: not this module's text
    assert article_text(module, set()) == (
        "Fake module.\n\nIndented second paragraph.\n\n"
        "helper\nHelp.\n\nMore help.\n\nThing\nA thing.\n\nThing.run\nRun it."
    )
    module.__all__ = ["Thing", "shared"]
    seen = {id(Thing)}
    assert article_text(module, seen) == (
        "Fake module.\n\nIndented second paragraph.\n\nshared\n" + len.__doc__
    )
    assert article_text(module, seen) == "Fake module.\n\nIndented second paragraph."


def test_collect_in_child_names_a_failing_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(DataError, match=r"expected it to write .* found exit code 1"):
        collect_in_child()


def test_wordpiece_round_trips_through_the_pipeline_loader(wordpiece: Path) -> None:
    tok = load_tokenizer(str(wordpiece))
    info = describe_tokenizer(tok, "auto", str(wordpiece))
    ids = {name: tok.token_to_id(name) for name in SPECIAL_TOKENS}
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert info.special_ids == {"mask": 4, "pad": 0, "unk": 1, "cls": 2, "sep": 3}
    assert (info.prefix_ids, info.suffix_ids) == ((2,), (3,))
    assert info.vocab_size == 2000 and info.dtype == "uint16"
    text = "Return the Number of items in a container."
    encoding = tok.encode(text)
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert ids["[UNK]"] not in encoding.ids
    assert tok.decode(encoding.ids) == text.lower()  # the decoder rejoins "##" pieces and "."


def test_train_wordpiece_refuses_a_vocabulary_without_room(
    corpus: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="vocab_size must exceed 5, found 5"):
        train_wordpiece(corpus, tmp_path / "t.json", 5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "--workers: expected at least 1, found 0"),
        (["--train-steps", "-1"], "--train-steps: expected 0 (skip) or more, found -1"),
    ],
)
def test_demo_refuses_bad_flags(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--output", str(tmp_path / "d"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_refuses_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    assert cli.main(["demo", "--output", str(tmp_path), "--train-steps", "0"]) == 2
    assert "expected a new folder or a previous demo output" in capsys.readouterr().err
    assert (tmp_path / "tokenizer.json").read_text() == "{}"
    with pytest.raises(UsageError, match="found other files; choose another --output"):
        demo._claim(tmp_path)


def test_demo_training_step_explains_how_to_enable_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(
        demo.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name)
    )
    assert demo._train(tmp_path, tmp_path / "run", 10) == 0
    assert "training skipped: torch missing; `pip install torch==" in capsys.readouterr().out


def test_demo_training_flags_are_ones_pipeline_train_accepts(tmp_path: Path) -> None:
    config = pytest.importorskip("pipeline.train.config")
    parsed = config.parse_config(demo.train_argv(tmp_path / "data", tmp_path / "run", 7))
    assert (parsed.data, parsed.output) == (str(tmp_path / "data"), str(tmp_path / "run"))
    assert (parsed.model, parsed.max_steps, parsed.eval_steps) == ("tiny-bert", 7, 7)
    assert (parsed.batch_size, parsed.lr) == (32, 1e-3)


@pytest.mark.timeout(120)
def test_demo_runs_end_to_end_then_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--train-steps", "0", "--workers", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    manifest = load_manifest(str(out / "data"))
    assert manifest.num_units >= 4
    for split in ("train", "validation"):
        assert manifest.splits[split].num_blocks > 0
        assert manifest.splits[split].ledger.num_document_tokens > 0
    assert manifest.tokenizer.vocab_size == demo.VOCAB_SIZE
    assert sum(f.num_rows for f in manifest.inputs) > 200
    assert f"{manifest.num_units} units ({manifest.num_units} run now)" in printed
    assert "training skipped (--train-steps 0)" in printed
    record = json.loads((out / demo.MARKER).read_text())
    assert record["tokenizer"] == str(out / "tokenizer.json")

    # A rerun keeps the tokenizer (retraining is not reproducible) and so resumes the run.
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokenizer: reused" in printed
    assert f"{manifest.num_units} units (0 run now)" in printed
    assert load_manifest(str(out / "data")) == manifest
