"""Each worker process's tokenizer, loaded once from the run's `OUT/tokenizer.json` and kept.

Every node reads the same bytes the driver hashed, so a worker can never tokenize with another
vocabulary than the manifest names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tokenizers import Tokenizer

from pipeline.errors import DataError, UsageError
from pipeline.format import storage
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.ingest.tokenization import (
    WORD_CACHE_WORDS,
    DocumentEncoder,
    TokenizerInfo,
    describe_tokenizer,
)

# Set by `pipeline run --tokenizer-cache`; forked workers inherit it, Ray tasks get it passed.
WORD_CACHE_ENV = "PIPELINE_TOKENIZER_CACHE"
MAX_WORD_CACHE_WORDS = 100_000_000  # ~26 GB per worker when full: more is a typo
_ENCODERS: dict[tuple[str, str], DocumentEncoder] = {}


def remember_encoder(output: str, tok: Tokenizer, info: TokenizerInfo) -> None:
    """Seed this process's cache with the driver's own tokenizer: the local executor and the
    forked startup child then skip reloading it (DeBERTa-v3's 8.5 MB JSON: ~1.2 s)."""
    _ENCODERS.clear()  # one run's encoder at a time: its cache may hold hundreds of MB
    _ENCODERS[(output, info.sha256)] = DocumentEncoder(tok, info, word_cache_words())


def word_cache_words() -> int:
    """Words each worker's tokenizer caches: $PIPELINE_TOKENIZER_CACHE, else the default."""
    value = os.environ.get(WORD_CACHE_ENV)
    if value is None:
        return WORD_CACHE_WORDS
    text = value.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) > MAX_WORD_CACHE_WORDS:
        raise UsageError(
            f"{WORD_CACHE_ENV}: expected a number of words from 0 to {MAX_WORD_CACHE_WORDS:,}, "
            f"found {value!r}; pass --tokenizer-cache N, or unset it for the default "
            f"{WORD_CACHE_WORDS:,}"
        )
    return int(text)


@contextlib.contextmanager
def word_cache_for_run(words: int | None) -> Iterator[None]:
    """--tokenizer-cache for one run: set in the environment (forked workers inherit it, Ray
    tasks are passed it), checked before the run claims its output, and restored after."""
    if words is not None and not 0 <= words <= MAX_WORD_CACHE_WORDS:
        raise UsageError(
            f"--tokenizer-cache: expected 0 to {MAX_WORD_CACHE_WORDS:,} words, found {words}; "
            f"pass 0 for no cache, or leave it out for the default {WORD_CACHE_WORDS:,}"
        )
    before = os.environ.get(WORD_CACHE_ENV)
    if words is not None:
        os.environ[WORD_CACHE_ENV] = str(words)
    try:
        word_cache_words()  # a bad inherited value fails here, before any work
        yield
    finally:
        if before is None:
            os.environ.pop(WORD_CACHE_ENV, None)
        else:
            os.environ[WORD_CACHE_ENV] = before


def load_encoder(output: str, dtype: str, expected_sha256: str) -> DocumentEncoder:
    key = (output, expected_sha256)
    if key not in _ENCODERS:
        # The file is the canonical JSON the driver hashed: its bytes are the identity.
        uri = storage.join(output, TOKENIZER_FILE)
        if not storage.exists(uri):
            raise DataError(
                f"{uri}: expected the run's tokenizer, written by the driver, found nothing on "
                "this worker; on a cluster of several nodes --output must be storage every node "
                "shares (s3:// or a shared filesystem)"
            )
        text = storage.read_bytes(uri).decode()
        tok = Tokenizer.from_str(text)
        info = describe_tokenizer(tok, dtype, canonical=text)
        if info.sha256 != expected_sha256:
            raise DataError(
                f"{storage.join(output, TOKENIZER_FILE)}: expected tokenizer sha256 "
                f"{expected_sha256}, found {info.sha256}; another run wrote into this folder, "
                "rerun with --overwrite"
            )
        _ENCODERS.clear()
        _ENCODERS[key] = DocumentEncoder(tok, info, word_cache_words())
    return _ENCODERS[key]
