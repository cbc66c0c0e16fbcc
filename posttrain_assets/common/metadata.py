"""Materialisation metadata and asset-check results shared by every stage."""

from __future__ import annotations

from collections import Counter
import hashlib
from typing import Any, Iterable, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from . import asset_names as A
from .accounting import Accounting, all_rejected_message

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 80


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    if len(text) > PREVIEW_CELL_CHARS:
        text = text[: PREVIEW_CELL_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def markdown_preview(table: pa.Table, n: int = PREVIEW_ROWS, columns: Iterable[str] | None = None) -> str:
    cols = [c for c in (columns or table.column_names) if c in table.column_names]
    if table.num_rows == 0 or not cols:
        return "_(no rows)_"
    rows = table.select(cols).slice(0, n).to_pylist()
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def length_stats(table: pa.Table, column: str) -> dict[str, float]:
    """Characters per value of a text column: min / mean / p50 / p95 / max."""
    if column not in table.column_names or table.num_rows == 0:
        return {}
    lengths = pc.utf8_length(table[column]).drop_null()
    if len(lengths) == 0:
        return {}
    q = pc.quantile(lengths, q=[0.5, 0.95], interpolation="nearest").to_pylist()
    return {
        f"{column}_chars_min": int(pc.min(lengths).as_py()),
        f"{column}_chars_mean": round(float(pc.mean(lengths).as_py()), 1),
        f"{column}_chars_p50": int(q[0]),
        f"{column}_chars_p95": int(q[1]),
        f"{column}_chars_max": int(pc.max(lengths).as_py()),
    }


class TableSummary:
    """What the metadata and checks read of a table, gathered batch by batch as a stream is written
    (`tap(batches)`), so a step never holds its whole output: row count, schema, the first
    PREVIEW_ROWS rows, a histogram of `text_column`'s lengths (exact quantiles, memory bounded by
    the number of distinct lengths), value counts of `count_column`, 16-byte digests of
    `unique_column`'s values (the uniqueness check: 16 bytes a row in Arrow, counted at the end)
    and null / blank counts of `required` / `nonblank`.
    `stage_metadata`, `unique_check` and `required_check` take it in place of a pa.Table."""

    def __init__(self, schema: pa.Schema, *, text_column: str | None = None, count_column: str | None = None,
                 unique_column: str | None = None, required: Iterable[str] = (), nonblank: Iterable[str] = ()):
        self.schema = schema
        self.column_names = schema.names
        self.num_rows = 0
        self.text_column, self.count_column, self.unique_column = text_column, count_column, unique_column
        self.required, self.nonblank = list(required), list(nonblank)
        self._head: list[pa.RecordBatch] = []
        self._head_rows = 0
        self.lengths: Counter = Counter()
        self.values: Counter = Counter()
        self._digests: list[pa.Array] = []  # fixed_size_binary(16) per batch: 16 bytes a row
        self._unique_nulls = 0
        self.null_counts = {c: 0 for c in self.required}
        self.blank_counts = {c: 0 for c in self.nonblank}

    def add(self, batch: pa.RecordBatch) -> None:
        self.num_rows += batch.num_rows
        if self._head_rows < PREVIEW_ROWS and batch.num_rows:
            self._head.append(batch.slice(0, PREVIEW_ROWS - self._head_rows))
            self._head_rows += self._head[-1].num_rows
        if self.text_column and self.text_column in self.column_names:
            lengths = pc.utf8_length(batch.column(self.text_column)).drop_null()
            if len(lengths):
                for r in pc.value_counts(lengths).to_pylist():
                    self.lengths[r["values"]] += r["counts"]
        if self.count_column:
            for r in pc.value_counts(batch.column(self.count_column)).to_pylist():
                self.values[r["values"]] += r["counts"]
        if self.unique_column:
            col = batch.column(self.unique_column)
            self._unique_nulls = min(1, self._unique_nulls + col.null_count)
            digests = b"".join(hashlib.blake2b(str(v).encode("utf-8"), digest_size=16).digest()
                               for v in col.drop_null().to_pylist())
            self._digests.append(pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(digests) // 16, [None, pa.py_buffer(digests)]))
        for c in self.required:
            self.null_counts[c] += batch.column(c).null_count
        for c in self.nonblank:
            stripped = pc.utf8_trim_whitespace(batch.column(c))
            self.blank_counts[c] += int(pc.sum(pc.equal(pc.utf8_length(stripped), 0)).as_py() or 0)

    def tap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.add(batch)
            yield batch

    @property
    def head(self) -> pa.Table:
        return pa.Table.from_batches(self._head, schema=self.schema)

    @property
    def distinct(self) -> int:
        if not self._digests:
            return self._unique_nulls
        digests = pa.chunked_array(self._digests, pa.binary(16))
        return int(pc.count_distinct(digests).as_py()) + self._unique_nulls

    def length_stats(self) -> dict[str, float]:
        """`length_stats` from the histogram: the same figures (nearest-rank quantiles as Arrow's)."""
        n = sum(self.lengths.values())
        if not n:
            return {}
        items = sorted(self.lengths.items())

        def at(rank: int) -> int:
            seen = 0
            for value, count in items:
                seen += count
                if rank < seen:
                    return value
            return items[-1][0]

        col = self.text_column
        total = sum(v * c for v, c in items)
        return {
            f"{col}_chars_min": int(items[0][0]),
            f"{col}_chars_mean": round(float(total / n), 1),
            f"{col}_chars_p50": int(at(round(0.5 * (n - 1)))),
            f"{col}_chars_p95": int(at(round(0.95 * (n - 1)))),
            f"{col}_chars_max": int(items[-1][0]),
        }

    def value_counts(self) -> dict:
        """Rows per value of `count_column`, most frequent first (as `language_counts`)."""
        return dict(sorted(self.values.items(), key=lambda kv: (-kv[1], kv[0])))


def accounting_markdown(acc: Accounting) -> str:
    lines = ["| outcome | reason | rows |", "|---|---|---|", f"| in | | {acc.rows_in} |",
             f"| out | | {acc.rows_out} |"]
    lines += [f"| removed | {r} | {n} |" for r, n in sorted(acc.removed_by_reason.items())]
    lines += [f"| rejected | {r} | {n} |" for r, n in sorted(acc.rejected_by_reason.items())]
    return "\n".join(lines)


def stage_metadata(table: "pa.Table | TableSummary", acc: Accounting, *, text_column: str | None = None,
                   preview_columns: Iterable[str] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    summary = table if isinstance(table, TableSummary) else None
    md: dict[str, Any] = {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "preview": dg.MetadataValue.md(markdown_preview(summary.head if summary else table,
                                                        columns=preview_columns)),
        "rows_in": acc.rows_in,
        "rows_out": acc.rows_out,
        "removed": acc.removed,
        "rejected": acc.rejected,
        "removed_by_reason": dg.MetadataValue.json(dict(acc.removed_by_reason)),
        "rejected_by_reason": dg.MetadataValue.json(dict(acc.rejected_by_reason)),
        "accounting": dg.MetadataValue.md(accounting_markdown(acc)),
    }
    if text_column:
        md.update(summary.length_stats() if summary else length_stats(table, text_column))
    md.update(extra or {})
    return md


# --------------------------------------------------------------------------- checks


def accounting_check(acc: Accounting, asset_key: str | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="row_accounting", asset_key=asset_key,
        passed=acc.balanced,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_in": acc.rows_in, "rows_out": acc.rows_out, "removed": acc.removed,
                  "rejected": acc.rejected,
                  "unaccounted": acc.rows_in - acc.rows_out - acc.removed - acc.rejected},
        description="rows_in = rows_out + removed + rejected",
    )


def unique_check(table: "pa.Table | TableSummary", column: str) -> dg.AssetCheckResult:
    n = table.num_rows
    if isinstance(table, TableSummary):
        assert table.unique_column == column, f"the summary counts {table.unique_column}, not {column}"
        distinct = table.distinct
    else:
        distinct = pc.count_distinct(table[column], mode="all").as_py() if n else 0
    return dg.AssetCheckResult(
        check_name=f"{column}_unique", passed=distinct == n,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": n, "distinct": distinct, "duplicates": n - distinct},
    )


def required_check(table: "pa.Table | TableSummary", columns: list[str], nonblank: list[str]) -> dg.AssetCheckResult:
    if isinstance(table, TableSummary):
        nulls = {c: table.null_counts[c] for c in columns}
        blank = {c: table.blank_counts[c] for c in nonblank}
        return _required_result(nulls, blank)
    nulls = {c: table[c].null_count for c in columns}
    blank = {}
    for c in nonblank:
        stripped = pc.utf8_trim_whitespace(table[c])
        blank[c] = int(pc.sum(pc.equal(pc.utf8_length(stripped), 0)).as_py() or 0)
    return _required_result(nulls, blank)


def _required_result(nulls: dict, blank: dict) -> dg.AssetCheckResult:
    passed = not any(nulls.values()) and not any(blank.values())
    return dg.AssetCheckResult(
        check_name="required_columns", passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"null_counts": dg.MetadataValue.json(nulls),
                  "blank_counts": dg.MetadataValue.json(blank)},
    )


SHOW_ISSUES = 5


def report_issues(context: dg.AssetExecutionContext, source: str, issues: list) -> None:
    """The first few issues (RowIssue) as run warnings; the rest are in the `rejects` view."""
    for it in issues[:SHOW_ISSUES]:
        context.log.warning(it.describe(source))
    if len(issues) > SHOW_ISSUES:
        context.log.warning(f"... and {len(issues) - SHOW_ISSUES} more; see the `rejects` view")


def all_rejected_metadata(context: dg.AssetExecutionContext, source: str, acc: Accounting, issues: list) -> dict:
    """When every row of the source failed this stage: one warning line in the run and in metadata
    (`all_rejected`); the run goes on (the downstream steps get an empty table)."""
    line = all_rejected_message(source, acc, issues)
    if line is None:
        return {}
    context.log.warning(line)
    return {"all_rejected": line}


def model_asset(name: str, *, group: str, description: str, unique: str, deps: Iterable[str] = (),
                kinds: frozenset = frozenset({"parquet", "pytorch"})):
    """The decorator of a per-source step that loads a model: partitioned by source, in the `gpu`
    pool (on Kubernetes: a GPU step, posttrain_assets/deployment.py), a blocking `row_accounting` check and `<unique>_unique`
    (the id column whose values must be unique). `deps`: tables it reads through storage by config."""
    from partitions import source_partitions

    from .pools import GPU_POOL

    return dg.asset(
        name=name, partitions_def=source_partitions, group_name=group, kinds=set(kinds), pool=GPU_POOL,
        description=description, deps=[dg.AssetDep(a) for a in deps] or None,
        check_specs=[dg.AssetCheckSpec("row_accounting", asset=name, blocking=True),
                     dg.AssetCheckSpec(f"{unique}_unique", asset=name)])


def read_input_partition(storage, asset: str, key: str, allowed: Iterable[str]) -> pa.Table:
    """Partition `key` of the table an asset's `input_asset` config names (read through storage, a
    dependency by config, not an input), or a dg.Failure naming what is wrong."""
    from resources.storage import MissingPartitionError

    allowed = list(allowed)
    if asset not in allowed:
        raise dg.Failure(description=f"input_asset must be one of {', '.join(allowed)}, got {asset!r}",
                         allow_retries=False)
    store = storage.store()
    try:
        return store.read(store.path(asset, key))
    except MissingPartitionError as exc:
        raise dg.Failure(description=f"source {key!r}: input asset {asset} has no partition {key!r} ({exc}); "
                                     f"materialise {asset} for {key!r} first, or set input_asset",
                         allow_retries=False) from None


def attribute_model_version(context, reward) -> str | None:
    """The attribute model a step's reward scores with, through the graph: for the `attributes` backend
    with no `attribute_model` pinned in its config, the `version` of the latest materialization of the
    `attribute_model` asset (an upstream of every asset that scores with the reward resource, see
    REWARD_DEPS), else None (the reward needs no version from the graph). A dg.Failure when that asset
    was never materialised."""
    from resources.attributes import ASSET

    if reward.backend.name != "attributes" or reward.backend.attribute_model:
        return None
    event = context.instance.get_latest_materialization_event(dg.AssetKey(ASSET))
    value = event.asset_materialization.metadata.get("version") if event and event.asset_materialization else None
    if value is None or not isinstance(value.value, str) or not value.value:
        raise dg.Failure(description=f"{context.asset_key.to_user_string()}: the reward backend 'attributes' scores "
                                     f"with the {ASSET} asset's latest materialization, and there is none with a "
                                     f"version: materialise {ASSET} (attribute_model_job), or set the reward "
                                     "resource's attribute_model to a version or an artifact folder",
                         allow_retries=False)
    context.log.info(f"reward: attribute model {value.value} ({ASSET}'s latest materialization)")
    return value.value


#: upstreams of every asset that scores with the reward resource: its `attributes` backend uses the
#: `attribute_model` asset's artifact (attribute_model_version), a lineage edge whichever backend is set
REWARD_DEPS = (A.ATTRIBUTE_MODEL,)
