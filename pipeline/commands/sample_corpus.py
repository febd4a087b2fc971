"""The demo's inputs, made offline from what every Python has: a corpus and a tokenizer.

The corpus is one Wikipedia-schema article (`id, url, title, text`, all strings) per standard
library module: its docstring, then each public class and function (and each class's public
methods) as a paragraph headed by its name; paragraphs are separated by a blank line. Modules
are the names in `sys.stdlib_module_names` plus their subpackages found with
`pkgutil.iter_modules(package.__path__)`. (`pkgutil.iter_modules()` over all of sys.path would
also list site-packages: torch, ray, ... slow to import and different on every machine.)

The docstrings are read in a bare child interpreter (`python -I -S this_file OUT.json`): torch
and Ray replace stdlib functions such as `inspect.getfile` and `sys.excepthook` when imported,
so reading in the caller would make the corpus depend on what it had imported. That is also
why the module-level imports here are standard library only. On Python 3.11.7 (Linux) this
gives 313 articles, 1.3 MB of text, in about a second; the files are byte-identical build to
build on the same Python and pyarrow.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib
import inspect
import io
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

# Modules whose import has effects (a browser, printing, a GUI, running a main) or that are
# not the standard library's own text (distutils is setuptools' copy when setuptools is there).
DENY = frozenset(
    {
        "antigravity",
        "this",
        "tkinter",
        "idlelib",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "readline",  # writes terminal escape sequences on import with some libreadline builds
        "rlcompleter",  # imports readline
        "distutils",
        "ensurepip",
        "venv",
        "pydoc_data",  # one 700 KB dict of help topics, no docstrings
        "encodings",  # ~120 generated codec modules with one-line docstrings
    }
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROW_GROUPS_PER_FILE = 4  # so that work units can start and end inside a file
COLLECT_TIMEOUT_S = 300


def module_names() -> list[str]:
    """Standard library modules and their submodules, sorted; private and denied ones left out."""
    names: set[str] = set()
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in DENY:
            continue
        names.add(top)
        module = _import(top)
        if module is not None and hasattr(module, "__path__"):
            names.update(_submodules(module))
    return sorted(names)


def _submodules(package: ModuleType) -> Iterator[str]:
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        last = info.name.rsplit(".", 1)[-1]
        if last.startswith("_") or last in ("test", "tests"):  # __main__ runs on import
            continue
        yield info.name
        sub = _import(info.name) if info.ispkg else None
        if sub is not None:
            yield from _submodules(sub)


def _import(name: str) -> ModuleType | None:
    """The module, or None if it does not import here (e.g. winreg on Linux)."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")  # DeprecationWarning from cgi, imp, ... on import
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):
            return None


def article_text(module: ModuleType, seen: set[int]) -> str:
    """Module docstring + public members' docstrings; members in `seen` (by id) are skipped,
    so a function re-exported by several modules (posix.stat as os.stat) appears once."""
    paragraphs = [_doc(module)]
    exported = getattr(module, "__all__", None)
    if isinstance(exported, list | tuple) and all(isinstance(n, str) for n in exported):
        names = list(exported)
    else:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        paragraphs.append(_headed(name, _doc(obj)))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (
                    inspect.isroutine(member) or isinstance(member, property)
                ):
                    paragraphs.append(_headed(f"{name}.{attr}", _doc(member)))
    text = "\n\n".join(p for p in paragraphs if p)
    return text.encode("utf-8", "replace").decode("utf-8")  # parquet strings must be UTF-8


def _doc(obj: object) -> str:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _headed(name: str, doc: str) -> str:
    return f"{name}\n{doc}" if doc else ""


def collect_articles() -> list[tuple[str, str]]:
    """(module name, article text) for every importable module with any text, sorted."""
    seen: set[int] = set()
    articles = []
    for name in module_names():
        module = _import(name)
        text = article_text(module, seen) if module is not None else ""
        if text.strip():
            articles.append((name, text))
    return articles


def collect_in_child(timeout_s: float = COLLECT_TIMEOUT_S) -> list[tuple[str, str]]:
    """`collect_articles()` run in a fresh `python -I -S` (no site-packages, no env vars)."""
    from pipeline.errors import DataError

    with tempfile.TemporaryDirectory(prefix="sample-corpus-") as tmp:
        out = Path(tmp, "articles.json")
        cmd = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(out)]
        done = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s, check=False
        )
        if done.returncode != 0 or not out.is_file():
            raise DataError(
                f"{' '.join(cmd)}: expected it to write the standard library's docstrings, "
                f"found exit code {done.returncode} ({done.stderr.decode()[-300:]!r}); "
                "run it by hand to see which module fails, and add it to DENY"
            )
        return [(name, text) for name, text in json.loads(out.read_text("utf-8"))]


def build_sample_corpus(folder: str | os.PathLike[str], num_files: int = 3) -> list[Path]:
    """Write the stdlib corpus as `train-0000i-of-0000n.parquet` (zstd, 4 row groups each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if num_files < 1:
        raise ValueError(f"num_files must be at least 1, found {num_files}")
    articles = collect_in_child()
    assert articles, "the standard library always has docstrings"
    schema = pa.schema(
        [(c, pa.string()) for c in ("id", "url", "title", "text")],
        metadata={"source": f"docstrings of the Python {sys.version.split()[0]} standard library"},
    )
    rows = {
        "id": [str(i) for i in range(len(articles))],
        "url": [f"https://docs.python.org/3/library/{name}.html" for name, _ in articles],
        "title": [name for name, _ in articles],
        "text": [text for _, text in articles],
    }
    table = pa.table(rows, schema=schema)
    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(num_files):
        lo, hi = len(articles) * k // num_files, len(articles) * (k + 1) // num_files
        path = Path(folder, f"train-{k:05d}-of-{num_files:05d}.parquet")
        tmp = path.with_suffix(".parquet.tmp")
        group_rows = max(1, -(-(hi - lo) // ROW_GROUPS_PER_FILE))
        pq.write_table(table.slice(lo, hi - lo), tmp, compression="zstd", row_group_size=group_rows)
        if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            os.remove(tmp)  # unchanged: keep the file (and its mtime) so a rerun resumes
        else:
            os.replace(tmp, path)
        paths.append(path)
    return paths


def train_wordpiece(
    parquet_paths: list[Path], out_path: str | os.PathLike[str], vocab_size: int = 8000
) -> Path:
    """Train a BERT-style uncased WordPiece on the files' `text` and save its tokenizer.json.

    On the 1.3 MB stdlib corpus, 8,000 tokens take ~1 s on 2 cores. Two trainings on the same
    text differ slightly (tokenizers 0.23: `##` pieces get ids in hash-map order, which breaks
    count ties differently; huggingface/tokenizers#1794), so callers that need a stable
    tokenizer keep the file rather than retrain.
    """
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, found {vocab_size}")

    def texts() -> Iterator[list[str]]:
        for path in parquet_paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["text"]):
                yield [t for t in batch.column(0).to_pylist() if t]

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(texts(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    # The child side of collect_in_child(): stdout is discarded, so modules that print on
    # import cannot corrupt the result, which goes to the file named on the command line.
    Path(sys.argv[1]).write_text(json.dumps(collect_articles()), encoding="utf-8")
