"""Row accounting and the rejects sidecar table shared by every stage.

Every stage reports `rows_in = rows_out + removed + rejected`. Rows that are rejected (bad input) or
removed (by policy, e.g. exact duplicates) are written, with a reason, to the stage's rejects table
(`<storage>/_rejects/<asset>/source=<key>/data.parquet`, DuckDB view `rejects`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
import json
from typing import Any

import pyarrow as pa

RAW_PREVIEW_CHARS = 2000

REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("asset", pa.string()),
    ("source_file", pa.string()),
    ("source_row", pa.int64()),
    ("outcome", pa.string()),  # 'rejected' (bad input) | 'removed' (policy)
    ("reason", pa.string()),
    ("field", pa.string()),
    ("detail", pa.string()),
    ("duplicate_of", pa.string()),
    ("raw", pa.string()),  # the offending row (truncated) for eyeballing
])


@dataclass
class RowIssue:
    """One rejected or removed row."""

    reason: str
    source_row: int | None = None
    source_file: str | None = None
    field: str | None = None
    detail: str = ""
    outcome: str = "rejected"
    duplicate_of: str | None = None
    raw: str | None = None

    def describe(self, source: str) -> str:
        where = f"source {source!r}"
        if self.source_file:
            where += f", file {self.source_file}"
        if self.source_row is not None:
            where += f", row {self.source_row}"
        if self.field:
            where += f", field {self.field!r}"
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def raw_preview(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:RAW_PREVIEW_CHARS]).decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates -> escapes
    return text[:RAW_PREVIEW_CHARS]


def rejects_table(source: str, asset: str, issues: list[RowIssue]) -> pa.Table:
    rows = []
    for it in issues:
        d = asdict(it)
        d.update(source=source, asset=asset)
        rows.append(d)
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


@dataclass
class Accounting:
    """rows_in = rows_out + removed + rejected, with reasons."""

    rows_in: int = 0
    rows_out: int = 0
    removed_by_reason: Counter = field(default_factory=Counter)
    rejected_by_reason: Counter = field(default_factory=Counter)

    @classmethod
    def from_issues(cls, rows_in: int, rows_out: int, issues: list[RowIssue]) -> "Accounting":
        acc = cls(rows_in=rows_in, rows_out=rows_out)
        for it in issues:
            target = acc.removed_by_reason if it.outcome == "removed" else acc.rejected_by_reason
            target[it.reason] += 1
        return acc

    @property
    def removed(self) -> int:
        return sum(self.removed_by_reason.values())

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_out + self.removed + self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in, "rows_out": self.rows_out,
            "removed": self.removed, "rejected": self.rejected,
            "removed_by_reason": dict(sorted(self.removed_by_reason.items())),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
        }


def all_rejected_message(source: str, acc: Accounting, issues: list[RowIssue], top: int = 3) -> str | None:
    """One line when no row of a source passed this stage and some were rejected (bad input),
    naming the source and the top reasons:
    "all 80 rows of 'mtbench' rejected: not_text on field 'turns' (expected a string, got list)"."""
    if acc.rows_in == 0 or acc.rows_out > 0 or acc.rejected == 0:
        return None  # rows removed by policy only (e.g. no ranked replies to pair) are no failure
    groups: dict[tuple, list[RowIssue]] = {}
    for it in issues:
        groups.setdefault((it.reason, it.field), []).append(it)
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]
    parts = []
    for (reason, fld), members in ranked:
        text = reason + (f" on field {fld!r}" if fld else "")
        if members[0].detail:
            text += f" ({members[0].detail})"
        parts.append(text + (f" x{len(members)}" if len(ranked) > 1 else ""))
    verb = "rejected" if acc.removed == 0 else "rejected or removed"
    return f"all {acc.rows_in} rows of {source!r} {verb}: " + "; ".join(parts)
