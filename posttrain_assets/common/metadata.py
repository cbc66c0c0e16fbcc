"""Materialisation metadata and asset-check results shared by every stage."""

from __future__ import annotations

from typing import Any, Iterable

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

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


def accounting_markdown(acc: Accounting) -> str:
    lines = ["| outcome | reason | rows |", "|---|---|---|", f"| in | | {acc.rows_in} |",
             f"| out | | {acc.rows_out} |"]
    lines += [f"| removed | {r} | {n} |" for r, n in sorted(acc.removed_by_reason.items())]
    lines += [f"| rejected | {r} | {n} |" for r, n in sorted(acc.rejected_by_reason.items())]
    return "\n".join(lines)


def stage_metadata(table: pa.Table, acc: Accounting, *, text_column: str | None = None,
                   preview_columns: Iterable[str] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "preview": dg.MetadataValue.md(markdown_preview(table, columns=preview_columns)),
        "rows_in": acc.rows_in,
        "rows_out": acc.rows_out,
        "removed": acc.removed,
        "rejected": acc.rejected,
        "removed_by_reason": dg.MetadataValue.json(dict(acc.removed_by_reason)),
        "rejected_by_reason": dg.MetadataValue.json(dict(acc.rejected_by_reason)),
        "accounting": dg.MetadataValue.md(accounting_markdown(acc)),
    }
    if text_column:
        md.update(length_stats(table, text_column))
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


def unique_check(table: pa.Table, column: str) -> dg.AssetCheckResult:
    n = table.num_rows
    distinct = pc.count_distinct(table[column], mode="all").as_py() if n else 0
    return dg.AssetCheckResult(
        check_name=f"{column}_unique", passed=distinct == n,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": n, "distinct": distinct, "duplicates": n - distinct},
    )


def required_check(table: pa.Table, columns: list[str], nonblank: list[str]) -> dg.AssetCheckResult:
    nulls = {c: table[c].null_count for c in columns}
    blank = {}
    for c in nonblank:
        stripped = pc.utf8_trim_whitespace(table[c])
        blank[c] = int(pc.sum(pc.equal(pc.utf8_length(stripped), 0)).as_py() or 0)
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
