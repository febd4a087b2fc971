"""JSON records on disk: written atomically, read back into typed fields with one clear error.

A manifest is read by four commands and the trainer; each used to index the parsed JSON by
string keys and turn the `KeyError`/`TypeError` of a damaged file into an error of its own.
`Fields` checks each value once, where the record is parsed, and a damaged file (a missing
key, a wrong type, `null`, `[]`) raises one `DataError` of the form "FILE: expected FIELD to
be WHAT, found WHAT; FIX".
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from pipeline.errors import DataError, brief
from pipeline.format import storage


def describe(value: object) -> str:
    """A found value in a few words: its JSON type and, when short, the value itself."""
    kind = {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return kind if value is None or len(text) > 40 else f"{kind} {text}"


class Fields:
    """The values of one JSON object, read by type; `where` names it inside `source`."""

    def __init__(self, data: object, where: str, source: str, fix: str) -> None:
        self.where, self.source, self.fix = where, source, fix
        if not isinstance(data, dict):
            self.fail(where or "the file", "an object", data)
        self.data: dict[str, Any] = data

    def fail(self, field: str, expected: str, found: object, missing: bool = False) -> NoReturn:
        what = "it missing" if missing else describe(found)
        raise DataError(
            f"{self.source}: expected {field} to be {expected}, found {what}; {self.fix}"
        )

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def value(self, key: str, expected: str) -> Any:
        if key not in self.data:
            self.fail(self.name(key), expected, None, missing=True)
        return self.data[key]

    def integer(self, key: str, *, nullable: bool = False) -> Any:
        expected = "an integer or null" if nullable else "an integer"
        value = self.value(key, expected)
        if (value is None and nullable) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.fail(self.name(key), expected, value)

    def text(self, key: str) -> str:
        value = self.value(key, "a string")
        if not isinstance(value, str):
            self.fail(self.name(key), "a string", value)
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        expected = " or ".join(repr(a) for a in allowed)
        value = self.value(key, expected)
        if value not in allowed:
            self.fail(self.name(key), expected, value)
        return value

    def integers(self, key: str) -> tuple[int, ...]:
        value = self.value(key, "a list of integers")
        if not isinstance(value, list) or any(
            not isinstance(v, int) or isinstance(v, bool) for v in value
        ):
            self.fail(self.name(key), "a list of integers", value)
        return tuple(value)

    def objects(self, key: str) -> list[Fields]:
        value = self.value(key, "a list of objects")
        if not isinstance(value, list):
            self.fail(self.name(key), "a list of objects", value)
        return [self.nested(item, f"{self.name(key)}[{i}]") for i, item in enumerate(value)]

    def record(self, key: str) -> Fields:
        return self.nested(self.value(key, "an object"), self.name(key))

    def nested(self, data: object, where: str) -> Fields:
        return Fields(data, where, self.source, self.fix)


def write_json_atomic(uri: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    storage.write_bytes_atomic(uri, text.encode())


def read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except (OSError, FileNotFoundError) as exc:
        raise DataError(
            f"{uri}: expected a JSON file, found none ({brief(exc)}); rerun the command that "
            "writes it (`pipeline run` resumes)"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{uri}: expected JSON, found a damaged file ({brief(exc)}); rerun the command to "
            "rewrite it"
        ) from exc
