"""Terminal histograms, pure: integer values into bins, bins into unicode bar lines.

Two binnings, both bounded in size whatever the data: `log2_index` (bin k holds values in
[2^k, 2^(k+1)), for document lengths that span 1 to 10^5 tokens) and `exact_then_log2` (one bin
per value below a limit, then power-of-two bins, for small counts such as documents per block).
"""

from __future__ import annotations

import numpy as np

# Eighths of a cell, so a bar's length is drawn to 1/8 of a character.
_PARTS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_FULL = "█"


def log2_index(values: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for integers v >= 1, exact (frexp avoids float rounding of log2)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and int(values.min()) < 1:
        raise ValueError(f"log2 bins need values >= 1, found {int(values.min())}")
    return (np.frexp(values.astype(np.float64))[1] - 1).astype(np.int64)


def log2_label(k: int) -> str:
    lo, hi = 2**k, 2 ** (k + 1) - 1
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def log2_bins(counts: np.ndarray) -> tuple[list[str], list[int]]:
    """Labels and counts of power-of-two bins (counts[k] = values in [2^k, 2^(k+1))), trimmed
    of empty bins at both ends."""
    nonzero = np.flatnonzero(counts)
    if not nonzero.size:
        return [], []
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    return [log2_label(k) for k in range(lo, hi + 1)], [int(c) for c in counts[lo : hi + 1]]


def exact_then_log2(by_value: np.ndarray, exact: int = 8) -> tuple[list[str], list[int]]:
    """Bins of a bincount (by_value[v] = how often v occurs): one per value below `exact` (a
    power of two), then [2^k, 2^(k+1)) bins; empty bins after the last non-empty one dropped."""
    if exact < 1 or exact & (exact - 1):
        raise ValueError(f"exact must be a power of two, found {exact}")
    by_value = np.asarray(by_value, dtype=np.int64)
    nonzero = np.flatnonzero(by_value)
    if not nonzero.size:
        return [], []
    top = int(nonzero[-1])
    labels = [str(v) for v in range(min(exact, top + 1))]
    counts = [int(c) for c in by_value[: len(labels)]]
    k = exact.bit_length() - 1
    while 2**k <= top:
        labels.append(log2_label(k))
        counts.append(int(by_value[2**k : 2 ** (k + 1)].sum()))
        k += 1
    return labels, counts


def bar(value: float, peak: float, width: int) -> str:
    """A bar `value / peak * width` cells long, in eighths; a non-zero value shows at least an
    eighth so that rare bins stay visible."""
    if value <= 0 or peak <= 0:
        return ""
    eighths = max(1, round(value / peak * width * 8))
    full, part = divmod(eighths, 8)
    return _FULL * full + _PARTS[part]


def draw(labels: list[str], counts: list[int], width: int = 40, indent: str = "  ") -> list[str]:
    """One line per bin: right-aligned label, bar scaled to the largest bin, count and share."""
    if len(labels) != len(counts):
        raise ValueError(f"{len(labels)} labels for {len(counts)} counts")
    total, peak = sum(counts), max(counts, default=0)
    label_w = max((len(s) for s in labels), default=0)
    count_w = max((len(f"{c:,}") for c in counts), default=0)
    lines = []
    for label, count in zip(labels, counts, strict=True):
        share = 100.0 * count / total if total else 0.0
        lines.append(
            f"{indent}{label:>{label_w}} │{bar(count, peak, width):<{width}} "
            f"{count:>{count_w},} {share:5.1f} %"
        )
    return lines
