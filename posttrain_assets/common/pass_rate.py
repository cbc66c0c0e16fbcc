"""Pass rates and the seed's label filter (`--filter-by-pass-rate`), shared by the stages that
write pass rates (synthesis: our own generations) and the ones that select by them (selection:
a dataset's existing labels, the ensemble's accuracy, our generations)."""

from collections import Counter
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc


def pass_rate_table(ids: list[str], flags: list[list[Optional[bool]]], extra: Optional[dict[str, list]] = None) -> pa.Table:
    """all_prompt_id, n (flags that are not None), correct, pass_rate = correct / n (null when n = 0).
    The same function reads a dataset's existing labels (e.g. 8 scored samples per MATH problem)."""
    n = [sum(f is not None for f in fl) for fl in flags]
    correct = [sum(f is True for f in fl) for fl in flags]
    cols: dict[str, Any] = {"all_prompt_id": pa.array(ids, pa.string()), "n": pa.array(n, pa.int64()),
                            "correct": pa.array(correct, pa.int64()),
                            "pass_rate": pa.array([c / k if k else None for c, k in zip(correct, n)], pa.float64())}
    cols.update(extra or {})
    return pa.table(cols)


def pass_rates_from_scored(rows: list[dict], id_field: str = "idx", flags_field: str = "score") -> pa.Table:
    """Pass rates from rows that carry per-sample correctness flags (math_qwen25_cot8_scored:
    `score` = 8 bools per MATH problem)."""
    return pass_rate_table([str(r[id_field]) for r in rows], [list(r[flags_field]) for r in rows])


def filter_by_pass_rate(table: pa.Table, max_pass_rate: float, column: str = "pass_rate") -> tuple[pa.Table, Counter]:
    """The seed's label filter (`--filter-by-pass-rate`): keep the problems whose pass rate is <=
    `max_pass_rate` (the hard ones). Returns (kept, removed counts by reason: above_max_pass_rate,
    no_pass_rate — a missing rate is never kept)."""
    if column not in table.column_names:
        raise ValueError(f"no pass-rate column {column!r} (columns: {', '.join(table.column_names)})")
    values = table[column]
    keep = pc.fill_null(pc.less_equal(values, max_pass_rate), False)
    removed = Counter({"above_max_pass_rate": int(pc.sum(pc.greater(values, max_pass_rate)).as_py() or 0),
                       "no_pass_rate": values.null_count})
    return table.filter(keep), +removed
