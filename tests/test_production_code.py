"""Production modules carry no test-only code (issue 11): every public function or method in
pipeline/ and jobs/ is used by production code, not only by the tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A reader's whole-file read: the other half of the writer's round trip, part of the format's
# API (pipeline/format/shards.py), which most tests use to look inside a shard.
FORMAT_API = {("pipeline/format/shards.py", "read_all")}


def test_every_public_function_is_used_outside_the_tests() -> None:
    files = sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("jobs/**/*.py")])
    assert len(files) > 30, "expected the package's modules"
    texts = {f.relative_to(ROOT).as_posix(): f.read_text() for f in files}
    production = "\n".join(texts.values())
    unused = []
    for name, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("_") or (name, node.name) in FORMAT_API:
                continue
            if len(re.findall(rf"\b{node.name}\b", production)) <= 1:  # its definition only
                unused.append(f"{name}: {node.name}")
    assert unused == [], "used by tests only: move them into the tests"
