"""The readable text of `pipeline inspect`: the summary dict rendered for a terminal.

`inspection.summarize` computes; this module only lays it out (histograms drawn with unicode
bars, the per-shard table with polars).
"""

from __future__ import annotations

import textwrap
from typing import Any

import polars as pl

from pipeline.core import histogram


def render_text(summary: dict[str, Any], shards: bool = False) -> str:
    t, inputs = summary["tokenizer"], summary["inputs"]
    rows, size = sum(i.get("num_rows") or 0 for i in inputs), sum(i["num_bytes"] for i in inputs)
    out = [
        f"pipeline inspect {summary['output']}",
        f"  format {summary['format_version']}, pipeline {summary['pipeline_version']}; "
        f"block_size {summary['block_size']}, {summary['packing']} packing, {t['dtype']} ids",
        f"  tokenizer sha256 {t['sha256'][:12]}, vocabulary {t['vocab_size']:,}",
        f"  inputs: {len(inputs)} files ({len(summary['skipped_files'])} skipped), {rows:,} rows, "
        f"{size:,} bytes; {summary['num_units']} work units",
    ]
    for split, s in summary["splits"].items():
        failed = s["ledger"]["problems"]
        out += [
            "",
            f"{split}: {s['num_shards']} shards, {s['num_blocks']:,} blocks, "
            f"{s['num_tokens']:,} tokens, {s['num_documents']:,} documents "
            f"({s['num_documents_read']:,} read, {sum(s['skipped'].values()):,} skipped)",
            f"  on disk {s['num_bytes']:,} bytes: {_num(s['bytes_per_token'], '.3f')} "
            f"bytes/token; compression {_num(s['compression_ratio'], '.2f')}x (raw ids + starts "
            f"{s['uncompressed_bytes']:,} bytes)",
            f"  ids: max {_num(s['max_id'], ',')} vs vocabulary {s['vocab_size']:,}; special "
            f"tokens {_num(s['special_rate'], '.3%')}, unknown {_num(s['unknown_rate'], '.3%')}",
            "  ledger check: " + ("FAILED: " + "; ".join(failed) if failed else "ok"),
        ]
        for name in ("docs_per_block", "document_length"):
            h = s[name]
            head = f"{name.replace('_', ' ')}: {h['measures']}; mean {_num(h['mean'], '.1f')}"
            out += textwrap.wrap(head, 96, initial_indent="  ", subsequent_indent="    ")
            bins = h["bins"]
            out += histogram.draw(
                [b["bin"] for b in bins], [b["count"] for b in bins], indent="    "
            )
        if s["top_tokens"]:
            out.append(f"  top {len(s['top_tokens'])} tokens, share of all tokens:")
        cells = [f"{r['token']} {r['share']:.2%}" for r in s["top_tokens"]]
        width = max((len(c) for c in cells), default=0) + 2
        for i in range(0, len(cells), 5):
            out.append("    " + "".join(c.ljust(width) for c in cells[i : i + 5]).rstrip())
        if shards:
            out += ["", shard_table(s["shards"])]
    if summary["samples"]:
        out += ["", f"samples: {len(summary['samples'])} blocks, evenly spaced"]
    for s in summary["samples"]:
        out.append(f"  {s['split']} block {s['block']:,} ({s['file']} row {s['row']:,}):")
        out.append(textwrap.fill(s["text"], 100, initial_indent="    ", subsequent_indent="    "))
    out += ["", "checks: ok" if summary["ok"] else f"checks: {len(summary['problems'])} FAILED"]
    return "\n".join(out + [f"  {p}" for p in summary["problems"]])


def shard_table(rows: list[dict[str, Any]]) -> str:
    """One line per shard; `vs manifest` says whether its block count is the manifest's."""
    if not rows:
        return "  (no shard could be read)"
    matches = pl.col("blocks") == pl.col("manifest_blocks")
    frame = pl.DataFrame(rows).select(
        "file",
        "blocks",
        "doc_starts",
        "tokens",
        "bytes",
        pl.col("bytes_per_token").cast(pl.Float64).round(3),
        pl.when(matches).then(pl.lit("ok")).otherwise(pl.lit("MISMATCH")).alias("vs manifest"),
    )
    style = {"tbl_formatting": "NOTHING", "tbl_cell_numeric_alignment": "RIGHT"}
    with pl.Config(
        **style,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=200,
        tbl_width_chars=200,
        thousands_separator=True,
    ):
        return textwrap.indent(str(frame), "  ")


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)
