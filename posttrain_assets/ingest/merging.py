"""raw rows -> unified prompt records (`merged_prompts`). Pure: Arrow in, Arrow out."""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import time
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from partitions.registry import SourceSpec
from resources.reasons import Reason

from ..common.accounting import Accounting, RowIssue, raw_preview
from ..common.label_filter import LabelFilter
from ..common.language import detect_language
from ..common.schemas import MESSAGE_TYPE, with_answer
from ..common.text import normalize_text, text_hash
from .adapters import ADAPTERS, GROUPERS, RowReject
from .loaders import RESERVED, batches_to_rows, table_to_rows

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
    # preference rows: each side's whole conversation, every turn (a tie: sides a and b in source order)
    ("chosen_messages", MESSAGE_TYPE),
    ("rejected_messages", MESSAGE_TYPE),
    ("tie_kind", pa.string()),  # a preference row without a preferred side: 'tie' | 'both_bad'; else null
])


class FieldMappingError(ValueError):
    """A registry field mapping names a column that the source's rows do not have."""



def _record_key(rec: dict, mode: str) -> bytes:
    """16-byte blake2b digest of the normalised prompt (mode 'record': + response/chosen/rejected):
    what exact dedup keeps per row, not the row."""
    parts = [rec["prompt"]]
    if mode == "record":  # both sides' whole conversations too: two battles on one prompt (ties too) differ
        parts += [rec.get("response") or "", rec.get("chosen") or "", rec.get("rejected") or ""]
        for side in ("chosen_messages", "rejected_messages"):
            parts.append("\x1e".join(f"{m['role']}\x1d{m['content']}" for m in rec.get(side) or []))
    return hashlib.blake2b("\x1f".join(normalize_text(p) for p in parts).encode("utf-8"), digest_size=16).digest()


def _id_digest(all_id: str) -> bytes:
    return hashlib.blake2b(all_id.encode("utf-8"), digest_size=16).digest()


def check_field_mapping(raw, spec: SourceSpec) -> None:
    """`raw`: a pa.Table or anything with `column_names` and `num_rows` (a PartitionReader)."""
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


MERGE_BATCH_ROWS = 20_000


class PromptMerger:
    """The merge of one source, row by row: adapter, validation, exact dedup (keep first).

    State kept across the whole source: two sets of 16-byte digests (normalised dedup key ->
    first all_prompt_id, and the all_prompt_ids seen), the issues (rejected / removed rows with a
    2,000-char preview each) and the counts; never the rows. `records(rows)` yields the kept
    records; `batches(rows)` the same as MERGED_SCHEMA record batches."""

    def __init__(self, spec: SourceSpec, *, total_rows: int, max_prompt_chars: int = 200_000,
                 dedup: bool = True, log: Callable[[str], None] | None = None,
                 progress_every: int = 50_000):
        self.spec, self.total_rows = spec, total_rows
        self.max_prompt_chars, self.dedup = max_prompt_chars, dedup
        self.log, self.progress_every = log, progress_every
        self.issues: list[RowIssue] = []
        self.candidates = 0
        self.raw_rows = 0
        self.rows_out = 0
        self._seen_key: dict[bytes, str] = {}
        self._seen_id: set[bytes] = set()
        self.label_filter = LabelFilter(spec.label_filter)

    def records(self, rows: Iterable[tuple[str, int, dict]]) -> Iterator[dict]:
        spec = self.spec
        adapter = ADAPTERS[spec.adapter]
        if spec.adapter in GROUPERS:  # flat messages -> trees (a reject comes back in place of a row)
            rows = GROUPERS[spec.adapter](rows, spec)
        issues = self.issues
        prompt_col = (spec.column("prompt") or spec.column("chosen") or spec.column("root")
                      or spec.column("conversation_a"))
        t0 = time.monotonic()
        for source_file, source_row, row in rows:
            self.raw_rows += 1
            if self.log and self.raw_rows % self.progress_every == 0:
                rate = self.raw_rows / max(time.monotonic() - t0, 1e-9)
                self.log(f"{spec.key}: merged {self.raw_rows:,}/{self.total_rows:,} raw rows ({rate:,.0f} rows/s)")
            try:
                if isinstance(row, RowReject):
                    raise row
                if self.label_filter:  # the source's label conditions, before the adapter: no record made
                    why = self.label_filter.judge(row)
                    if why is not None:
                        raise RowReject(why[0], why[1], why[2], outcome="removed")
                produced = adapter(row, spec, source_file, source_row)
            except RowReject as rj:
                self.candidates += 1
                issues.append(RowIssue(reason=rj.reason, source_file=source_file, source_row=source_row,
                                       field=rj.field, detail=rj.detail, outcome=rj.outcome,
                                       raw=raw_preview(row)))
                continue
            for rec in produced:
                self.candidates += 1
                if isinstance(rec, RowReject):
                    issues.append(RowIssue(reason=rec.reason, source_file=source_file,
                                           source_row=source_row, field=rec.field, detail=rec.detail,
                                           outcome=rec.outcome, raw=raw_preview(row)))
                    continue
                for side in ("chosen", "rejected"):  # single-turn pairs fill the message lists too
                    if rec[side] is not None and rec[f"{side}_messages"] is None:
                        rec[f"{side}_messages"] = with_answer(rec["messages"], rec[side])
                prompt = rec["prompt"]
                if prompt is None or not prompt.strip():
                    issues.append(RowIssue(reason=Reason.EMPTY_PROMPT, source_file=source_file,
                                           source_row=source_row, field=prompt_col,
                                           detail="prompt is empty or whitespace only", raw=raw_preview(row)))
                    continue
                if len(prompt) > self.max_prompt_chars:
                    issues.append(RowIssue(reason=Reason.PROMPT_TOO_LONG, source_file=source_file,
                                           source_row=source_row, field=prompt_col,
                                           detail=f"{len(prompt):,} chars > max_prompt_chars={self.max_prompt_chars:,}",
                                           raw=raw_preview(prompt)))
                    continue
                all_id = f"{spec.key}:{rec['source_prompt_id']}"
                if self.dedup:
                    key = _record_key(rec, spec.dedup_key)
                    first = self._seen_key.get(key)
                    if first is not None:
                        issues.append(RowIssue(reason=Reason.EXACT_DUPLICATE, outcome="removed",
                                               source_file=source_file, source_row=source_row,
                                               detail=f"normalised {spec.dedup_key} equals an earlier row's",
                                               duplicate_of=first, raw=raw_preview(prompt)))
                        continue
                id_key = _id_digest(all_id)
                if id_key in self._seen_id:
                    issues.append(RowIssue(reason=Reason.DUPLICATE_ID, source_file=source_file,
                                           source_row=source_row, field=spec.column("id"),
                                           detail=f"source_prompt_id {rec['source_prompt_id']!r} seen before",
                                           raw=raw_preview(row)))
                    continue
                if self.dedup:
                    self._seen_key[key] = all_id
                self._seen_id.add(id_key)
                rec.update(all_prompt_id=all_id, source=spec.key, source_file=source_file,
                           source_row=source_row, kind=spec.kind,
                           language=detect_language(" ".join(m["content"] for m in rec["messages"] or [])
                                                    or prompt),
                           prompt_norm_hash=text_hash(normalize_text(prompt)),
                           labels=None if rec["labels"] is None else json.dumps(rec["labels"], ensure_ascii=False))
                self.rows_out += 1
                yield rec
        if spec.adapter in GROUPERS:
            self.raw_rows = self.total_rows  # the messages read, not the trees built from them

    def batches(self, rows: Iterable[tuple[str, int, dict]],
                batch_rows: int = MERGE_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        buf: list[dict] = []
        for rec in self.records(rows):
            buf.append(rec)
            if len(buf) >= batch_rows:
                yield from pa.Table.from_pylist(buf, schema=MERGED_SCHEMA).to_batches()
                buf = []
        if buf:
            yield from pa.Table.from_pylist(buf, schema=MERGED_SCHEMA).to_batches()

    def accounting(self, rows_out: int | None = None) -> Accounting:
        return Accounting.from_issues(self.candidates, self.rows_out if rows_out is None else rows_out,
                                      self.issues)


def merge_prompts(raw: pa.Table, spec: SourceSpec, *, max_prompt_chars: int = 200_000,
                  dedup: bool = True, log: Callable[[str], None] | None = None,
                  progress_every: int = 50_000) -> MergeResult:
    """Map every raw row through the source's adapter, validate, drop exact duplicates (keep first).

    Accounting counts candidate records: a raw row that yields k records counts k, a raw row
    rejected whole counts 1. rows_in = rows_out + removed + rejected. (One table in, one out:
    `merge_prompt_batches` is the same merge over record batches.)
    """
    check_field_mapping(raw, spec)
    merger = PromptMerger(spec, total_rows=raw.num_rows, max_prompt_chars=max_prompt_chars, dedup=dedup,
                          log=log, progress_every=progress_every)
    table = pa.Table.from_pylist(list(merger.records(table_to_rows(raw))), schema=MERGED_SCHEMA)
    return MergeResult(table=table, issues=merger.issues, accounting=merger.accounting(table.num_rows),
                       raw_rows=merger.raw_rows)


def merge_prompt_batches(raw, spec: SourceSpec, *, max_prompt_chars: int = 200_000, dedup: bool = True,
                         log: Callable[[str], None] | None = None, read_batch_rows: int = 20_000,
                         batch_rows: int = MERGE_BATCH_ROWS) -> tuple[PromptMerger, Iterator[pa.RecordBatch]]:
    """`merge_prompts` over a lazily read `raw_records` partition (`raw`: schema, num_rows,
    iter_batches(n), e.g. a PartitionReader): (the merger, whose issues and accounting are complete
    once the batches are consumed; the merged record batches, MERGED_SCHEMA)."""
    check_field_mapping(raw, spec)
    merger = PromptMerger(spec, total_rows=raw.num_rows, max_prompt_chars=max_prompt_chars, dedup=dedup, log=log)
    rows = batches_to_rows(raw.schema, raw.iter_batches(read_batch_rows))
    return merger, merger.batches(rows, batch_rows)


def language_counts(table: pa.Table) -> dict[str, int]:
    """Rows per `language`, most frequent first."""
    if table.num_rows == 0:
        return {}
    counts = table.group_by("language").aggregate([("language", "count")]).to_pylist()
    return dict(sorted(((r["language"], r["language_count"]) for r in counts), key=lambda kv: (-kv[1], kv[0])))
