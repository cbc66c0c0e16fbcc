"""The hygiene rules over an Arrow table: which rows stay (with their `hygiene_flags`), which go (with
the first failing `drop` rule and its matched span), and what each rule finds alone (`per_rule`).
Pure: pyarrow + the rules; no dagster.

A table is read through its `TableSpec`: the id column, the prompt column and the response columns
with their roles (rules.py), a chunk of rows at a time (only a chunk is ever Python values). Large
tables are checked in worker processes (fork: each reads its chunks from the parent's Arrow memory,
only the verdicts travel back)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from .lists import PhraseLists, load_lists
from .rules import ACTIONS, RULES, Checker, Row, Thresholds, Verdict
from .scripts import warm_up

FLAGS_COLUMN = "hygiene_flags"
EXAMPLES = 3
#: the finish reason of a record whose original row (its `metadata` JSON) says it stopped at the limit
_LENGTH_IN_METADATA = r'"finish_reason":\s*"length"'
PARALLEL_MIN_ROWS = 20_000
CHUNK_ROWS = 5_000


@dataclass(frozen=True)
class TableSpec:
    """How the rules read a table."""

    id_column: str
    prompt: str
    fields: tuple[tuple[str, str], ...]  # (column, role)
    finish_reason: str | None = None  # a column with the generation's finish reason ...
    metadata_finish_reason: bool = False  # ... or the `metadata` JSON column holds it (records)
    # field -> a messages column whose last assistant turn is the field's text where the field is empty
    # (a preference tie keeps both sides as conversations only)
    messages_fallback: tuple[tuple[str, str], ...] = ()

    def columns(self) -> list[str]:
        cols = [self.id_column, self.prompt, *(c for c, _ in self.fields)]
        cols += [self.finish_reason] if self.finish_reason else []
        cols += ["metadata"] if self.metadata_finish_reason else []
        return cols


@dataclass
class HygieneResult:
    kept: pa.Table  # the rows that stay, + hygiene_flags
    dropped: list[tuple[int, Verdict]]  # (row position, its first failing drop rule)
    per_rule: dict  # rule -> {action, fires, share, by_reason}: what each rule finds alone, over all rows
    examples: dict  # rule -> up to EXAMPLES {id, field, reason, span, detail}
    flagged: Counter  # rule -> kept rows it flags
    rows_per_s: float = 0.0

    @property
    def removed_by_reason(self) -> Counter:
        return Counter(v.reason for _, v in self.dropped)


@dataclass(frozen=True)
class Settings:
    actions: dict  # rule -> drop | flag | off
    thresholds: Thresholds = field(default_factory=Thresholds)
    lists_path: str | None = None

    def check(self) -> None:
        bad = {r: a for r, a in self.actions.items() if r not in RULES or a not in ACTIONS}
        if bad:
            raise ValueError(f"hygiene actions {bad}: rules are {', '.join(RULES)}; actions {', '.join(ACTIONS)}")

    def active(self) -> frozenset[str]:
        return frozenset(r for r in RULES if self.actions.get(r, "drop") != "off")

    def action(self, rule: str) -> str:
        return self.actions.get(rule, "drop")


def missing_columns(table: pa.Table, spec: TableSpec) -> list[str]:
    return [c for c in spec.columns() if c not in table.column_names]


def _rows(table: pa.Table, spec: TableSpec) -> tuple[list, list[list], list]:
    """(prompts, texts per field, finish reasons) of a slice of the table, as Python values."""
    prompts = table[spec.prompt].to_pylist()
    texts = [table[c].to_pylist() for c, _ in spec.fields]
    fallback = dict(spec.messages_fallback)
    for k, (c, _) in enumerate(spec.fields):
        if fallback.get(c) in table.column_names:
            texts[k] = [x if (x or "").strip() else _last_assistant(m)
                        for x, m in zip(texts[k], table[fallback[c]].to_pylist())]
    if spec.finish_reason:
        finish = table[spec.finish_reason].to_pylist()
    elif spec.metadata_finish_reason:
        hit = pc.fill_null(pc.match_substring_regex(table["metadata"], _LENGTH_IN_METADATA), False).to_pylist()
        finish = ["length" if h else None for h in hit]
    else:
        finish = [None] * table.num_rows
    return prompts, texts, finish


def _last_assistant(messages: list | None) -> str | None:
    for m in reversed(messages or []):
        if m and m.get("role") == "assistant":
            return m.get("content")
    return None


_WORK: dict = {}  # what forked workers read: the table (Arrow memory, shared) and the settings


def _check_range(bounds: tuple[int, int]) -> list[list[Verdict]]:
    """The verdicts of rows [start, stop): only this slice becomes Python values (memory per chunk)."""
    table, spec, settings = (_WORK[k] for k in ("table", "spec", "settings"))
    checker = Checker(load_lists(settings.lists_path), settings.thresholds, settings.active())
    prompts, texts, finish = _rows(table.slice(bounds[0], bounds[1] - bounds[0]), spec)
    roles = [role for _, role in spec.fields]
    names = [c for c, _ in spec.fields]
    out = []
    for i in range(len(prompts)):
        fields = (("prompt", prompts[i], "prompt"),) + tuple(
            (names[k], texts[k][i], roles[k]) for k in range(len(names)) if texts[k][i] is not None)
        out.append(checker.check(Row(prompts[i] or "", fields, finish[i])))
    return out


def _verdicts(n: int, workers: int, progress: Callable[[int, int], None] | None) -> list[list[Verdict]]:
    chunks = [(s, min(s + CHUNK_ROWS, n)) for s in range(0, n, CHUNK_ROWS)]
    out: list[list[Verdict]] = []
    if workers > 1 and n >= PARALLEL_MIN_ROWS:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for part in pool.imap(_check_range, chunks):
                out.extend(part)
                if progress:
                    progress(len(out), n)
        return out
    for bounds in chunks:
        out.extend(_check_range(bounds))
        if progress:
            progress(len(out), n)
    return out


def apply_hygiene(table: pa.Table, spec: TableSpec, settings: Settings, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> HygieneResult:
    """Check every row (see the module docstring); raises ValueError for a table without the spec's
    columns or bad settings."""
    settings.check()
    missing = missing_columns(table, spec)
    if missing and table.num_rows == 0:  # an empty partition written without the columns: nothing to check
        return _tally(table, None, [], settings)
    if missing:
        raise ValueError(f"no column {', '.join(map(repr, missing))} (the hygiene spec reads "
                         f"{', '.join(spec.columns())})")
    load_lists(settings.lists_path)  # a bad list fails here, before any worker starts
    warm_up()  # the language-id model and the codec classes: loaded once here, inherited by forked workers
    start = time.perf_counter()
    _WORK.update(table=table, spec=spec, settings=settings)
    try:
        verdicts = _verdicts(table.num_rows, max(1, workers or os.cpu_count() or 1), progress)
    finally:
        _WORK.clear()
    res = _tally(table, table[spec.id_column], verdicts, settings)
    res.rows_per_s = table.num_rows / max(time.perf_counter() - start, 1e-9)
    return res


def _tally(table: pa.Table, ids: pa.ChunkedArray | None, verdicts: list[list[Verdict]],
           settings: Settings) -> HygieneResult:
    active = [r for r in RULES if r in settings.active()]
    fires = {r: Counter() for r in active}
    examples: dict = {r: [] for r in active}
    keep, flags, dropped, flagged = [], [], [], Counter()
    for i, found in enumerate(verdicts):
        for v in found:
            fires[v.rule][v.reason] += 1
            if len(examples[v.rule]) < EXAMPLES:
                examples[v.rule].append({"id": str(ids[i].as_py()), "field": v.field, "reason": str(v.reason),
                                         "span": v.span, "detail": v.detail})
        drops = [v for v in found if settings.action(v.rule) == "drop"]
        if drops:
            dropped.append((i, drops[0]))
            continue
        keep.append(i)
        row_flags = [v.rule for v in found if settings.action(v.rule) == "flag"]
        flagged.update(row_flags)
        flags.append(row_flags)
    n = table.num_rows
    per_rule = {r: {"action": settings.action(r), "fires": sum(c.values()),
                    "share": round(sum(c.values()) / n, 4) if n else 0.0,
                    "by_reason": {str(k): v for k, v in sorted(c.items())}} for r, c in fires.items()}
    kept = table.take(pa.array(keep, pa.int64()))
    if FLAGS_COLUMN in kept.column_names:
        kept = kept.drop_columns([FLAGS_COLUMN])
    kept = kept.append_column(FLAGS_COLUMN, pa.array(flags, pa.list_(pa.string())))
    return HygieneResult(kept=kept, dropped=dropped, per_rule=per_rule, examples=examples, flagged=flagged)


def per_rule_markdown(res: HygieneResult, rows: int) -> str:
    first = Counter(v.rule for _, v in res.dropped)
    lines = ["| order | rule | action | fires alone | share | dropped here (first failing) | flagged |",
             "|---|---|---|---|---|---|---|"]
    for k, r in enumerate(RULES, 1):
        p = res.per_rule.get(r)
        if p is None:
            lines.append(f"| {k} | {r} | off | | | | |")
            continue
        lines.append(f"| {k} | {r} | {p['action']} | {p['fires']} | {p['share']:.1%} | {first.get(r, 0)} | "
                     f"{res.flagged.get(r, 0)} |")
    lines.append(f"| | **kept** | | {res.kept.num_rows} of {rows} | | | |")
    return "\n".join(lines)


def lists_summary(lists: PhraseLists) -> dict:
    return {"path": lists.path, "version": lists.version, **{f"{k}_patterns": v for k, v in lists.counts.items()}}
