"""The token ledger: every document and token of a split accounted for, so nothing is lost silently.

It balances exactly, per record and summed per split:
  documents read  = documents packed + skipped (by reason)
  document tokens + special tokens + carried in = block tokens + carried out + dropped
Units carry their leftover out; the tail record carries them all in, so the sums cancel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SKIP_REASONS = ("null_text", "empty_text", "invalid_utf8")


@dataclass(kw_only=True)
class Ledger:
    num_documents: int = 0
    num_documents_packed: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    num_document_tokens: int = 0
    num_special_tokens: int = 0
    num_carried_in: int = 0
    num_block_tokens: int = 0
    num_carried_out: int = 0
    num_dropped_tokens: int = 0
    # Documents whose start fell in the split's dropped remainder: packed, yet in no block.
    num_documents_dropped: int = 0

    def add(self, other: Ledger) -> None:
        for f in dataclasses.fields(self):
            if f.name == "skipped":
                for reason, n in other.skipped.items():
                    self.skipped[reason] = self.skipped.get(reason, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def problems(self) -> list[str]:
        """What does not balance, in words (empty when the ledger is right)."""
        out = []
        skipped = sum(self.skipped.values())
        if self.num_documents != self.num_documents_packed + skipped:
            out.append(
                f"documents read {self.num_documents} != packed {self.num_documents_packed}"
                f" + skipped {skipped}"
            )
        tokens_in = self.num_document_tokens + self.num_special_tokens + self.num_carried_in
        tokens_out = self.num_block_tokens + self.num_carried_out + self.num_dropped_tokens
        if tokens_in != tokens_out:
            out.append(
                f"tokens in {tokens_in} (document {self.num_document_tokens} + special "
                f"{self.num_special_tokens} + carried in {self.num_carried_in}) != tokens out "
                f"{tokens_out} (blocks {self.num_block_tokens} + carried out "
                f"{self.num_carried_out} + dropped {self.num_dropped_tokens})"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        return cls(**data)
