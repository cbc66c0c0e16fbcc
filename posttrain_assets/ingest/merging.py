"""raw rows -> unified prompt records (`merged_prompts`). Pure: Arrow in, Arrow out."""

from __future__ import annotations

from dataclasses import dataclass
import json
import time
from typing import Callable

import pyarrow as pa

from partitions.registry import SourceSpec

from ..common.accounting import Accounting, RowIssue, raw_preview
from ..common.language import detect_language
from ..common.schemas import MESSAGE_TYPE
from ..common.text import normalize_text, text_hash
from .adapters import ADAPTERS, GROUPERS, RowReject
from .loaders import RESERVED, table_to_rows

MERGED_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()),  # '<source>:<source_prompt_id>', stable across runs and sources
    ("source", pa.string()),
    ("source_prompt_id", pa.string()),
    ("source_file", pa.string()),
    ("source_row", pa.int64()),
    ("kind", pa.string()),
    ("language", pa.string()),  # ISO 639-1 of the prompt's turns (py3langid; kana -> ja; 'und' without letters)
    ("prompt", pa.string()),
    ("messages", MESSAGE_TYPE),  # the prompt as a conversation (one user turn for single-turn)
    ("response", pa.string()),  # sft/cot answer or OASST reply
    ("chosen", pa.string()),  # preference
    ("rejected", pa.string()),
    ("reference_answer", pa.string()),  # e.g. GSM8K final answer after '####'
    ("rank", pa.int64()),  # OASST reply rank (0 = best)
    ("labels", pa.string()),  # JSON: human attribute labels of the reply
    ("preference_score", pa.float64()),  # e.g. HelpSteer3 overall_preference (-3..3; 0 = tie)
    ("prompt_norm_hash", pa.string()),  # blake2b-64 of the normalised prompt (cross-source exact dedup)
    ("metadata", pa.string()),  # JSON: the original row (OASST: the two messages, without replies)
])


class FieldMappingError(ValueError):
    """A registry field mapping names a column that the source's rows do not have."""



def _record_key(rec: dict, mode: str) -> str:
    parts = [rec["prompt"]]
    if mode == "record":
        parts += [rec.get("response") or "", rec.get("chosen") or "", rec.get("rejected") or ""]
    return text_hash("\x1f".join(normalize_text(p) for p in parts))


def check_field_mapping(raw: pa.Table, spec: SourceSpec) -> None:
    if raw.num_rows == 0:
        return
    columns = [c[:-4] if c[:-4] in RESERVED else c for c in raw.column_names if c not in RESERVED]
    for logical, col in spec.mapped_columns().items():
        if col == "." or col in columns:
            continue
        raise FieldMappingError(
            f"source {spec.key!r}: field mapping {logical} -> {col!r}: no column {col!r} in the "
            f"source's rows (columns: {', '.join(columns)}); fix 'fields.{logical}' in the registry")


@dataclass
class MergeResult:
    table: pa.Table
    issues: list[RowIssue]
    accounting: Accounting
    raw_rows: int


def merge_prompts(raw: pa.Table, spec: SourceSpec, *, max_prompt_chars: int = 200_000,
                  dedup: bool = True, log: Callable[[str], None] | None = None,
                  progress_every: int = 50_000) -> MergeResult:
    """Map every raw row through the source's adapter, validate, drop exact duplicates (keep first).

    Accounting counts candidate records: a raw row that yields k records counts k, a raw row
    rejected whole counts 1. rows_in = rows_out + removed + rejected.
    """
    check_field_mapping(raw, spec)
    adapter = ADAPTERS[spec.adapter]
    rows = table_to_rows(raw)
    if spec.adapter in GROUPERS:  # flat messages -> trees (a reject comes back in place of a row)
        rows = GROUPERS[spec.adapter](rows, spec)
    issues: list[RowIssue] = []
    out: list[dict] = []
    seen_key: dict[str, str] = {}
    seen_id: set[str] = set()
    candidates = 0
    t0 = time.monotonic()
    raw_rows = 0
    for source_file, source_row, row in rows:
        raw_rows += 1
        if log and raw_rows % progress_every == 0:
            rate = raw_rows / max(time.monotonic() - t0, 1e-9)
            log(f"{spec.key}: merged {raw_rows:,}/{raw.num_rows:,} raw rows ({rate:,.0f} rows/s)")
        try:
            if isinstance(row, RowReject):
                raise row
            produced = adapter(row, spec, source_file, source_row)
        except RowReject as rj:
            candidates += 1
            issues.append(RowIssue(reason=rj.reason, source_file=source_file, source_row=source_row,
                                   field=rj.field, detail=rj.detail, raw=raw_preview(row)))
            continue
        for rec in produced:
            candidates += 1
            if isinstance(rec, RowReject):
                issues.append(RowIssue(reason=rec.reason, source_file=source_file,
                                       source_row=source_row, field=rec.field, detail=rec.detail,
                                       raw=raw_preview(row)))
                continue
            prompt = rec["prompt"]
            prompt_col = spec.column("prompt") or spec.column("chosen") or spec.column("root")
            if prompt is None or not prompt.strip():
                issues.append(RowIssue(reason="empty_prompt", source_file=source_file,
                                       source_row=source_row, field=prompt_col,
                                       detail="prompt is empty or whitespace only", raw=raw_preview(row)))
                continue
            if len(prompt) > max_prompt_chars:
                issues.append(RowIssue(reason="prompt_too_long", source_file=source_file,
                                       source_row=source_row, field=prompt_col,
                                       detail=f"{len(prompt):,} chars > max_prompt_chars={max_prompt_chars:,}",
                                       raw=raw_preview(prompt)))
                continue
            all_id = f"{spec.key}:{rec['source_prompt_id']}"
            if dedup:
                key = _record_key(rec, spec.dedup_key)
                first = seen_key.get(key)
                if first is not None:
                    issues.append(RowIssue(reason="exact_duplicate", outcome="removed",
                                           source_file=source_file, source_row=source_row,
                                           detail=f"normalised {spec.dedup_key} equals an earlier row's",
                                           duplicate_of=first, raw=raw_preview(prompt)))
                    continue
            if all_id in seen_id:
                issues.append(RowIssue(reason="duplicate_id", source_file=source_file,
                                       source_row=source_row, field=spec.column("id"),
                                       detail=f"source_prompt_id {rec['source_prompt_id']!r} seen before",
                                       raw=raw_preview(row)))
                continue
            if dedup:
                seen_key[key] = all_id
            seen_id.add(all_id)
            rec.update(all_prompt_id=all_id, source=spec.key, source_file=source_file,
                       source_row=source_row, kind=spec.kind,
                       language=detect_language(" ".join(m["content"] for m in rec["messages"] or [])
                                                or prompt),
                       prompt_norm_hash=text_hash(normalize_text(prompt)),
                       labels=None if rec["labels"] is None else json.dumps(rec["labels"], ensure_ascii=False))
            out.append(rec)
    if spec.adapter in GROUPERS:
        raw_rows = raw.num_rows  # the messages read, not the trees built from them
    table = pa.Table.from_pylist(out, schema=MERGED_SCHEMA)
    acc = Accounting.from_issues(candidates, table.num_rows, issues)
    return MergeResult(table=table, issues=issues, accounting=acc, raw_rows=raw_rows)


def language_counts(table: pa.Table) -> dict[str, int]:
    """Rows per `language`, most frequent first."""
    if table.num_rows == 0:
        return {}
    counts = table.group_by("language").aggregate([("language", "count")]).to_pylist()
    return dict(sorted(((r["language"], r["language_count"]) for r in counts), key=lambda kv: (-kv[1], kv[0])))
