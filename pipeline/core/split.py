"""Pure split assignment: a document goes to validation by a stable hash of its id.

The hash is BLAKE2b (8 bytes) of the id's UTF-8 bytes read as an unsigned integer, scaled to
[0, 1): stable across machines, Python versions and runs, and independent of row order, so an
article never has blocks in both splits and the same article lands in the same split whatever
the shard layout or worker count.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "validation")
_SCALE = float(2**64)


def validation_score(doc_id: str) -> float:
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign_validation(doc_ids: list[str], fraction: float) -> np.ndarray:
    """Boolean mask: True where the document belongs to the validation split."""
    if fraction <= 0.0:
        return np.zeros(len(doc_ids), dtype=bool)
    return np.fromiter(
        (validation_score(d) < fraction for d in doc_ids), dtype=bool, count=len(doc_ids)
    )
