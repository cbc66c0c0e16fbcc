"""A source's records against the benchmark index (`contamination`) and the report over every source
(`contamination_report`); the export leaves the contaminated rows out (export/hf_dataset.py
`leave_out`). Pure: Arrow in, Arrow out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from .ngrams import MATCH_TYPE, Match, Matcher, fired, semantic_candidates

#: the record tables checked, and the export config each becomes
RECORD_ASSETS = {"sft_records": "sft", "cot_records": "cot", "preference_records": "preference"}
#: a record's response text(s): matched against the benchmarks' reference answers
RESPONSE_COLUMNS = {"sft_records": ("answer",), "cot_records": ("thinking", "answer"),
                    "preference_records": ("chosen", "rejected")}

CONTAMINATION_SCHEMA = pa.schema([
    ("record_asset", pa.string()), ("all_prompt_id", pa.string()), ("source", pa.string()),
    ("contaminated", pa.bool_()),  # the n-gram rule fired for at least one benchmark item
    ("benchmark", pa.string()), ("item_id", pa.string()), ("coverage", pa.float64()), ("span", pa.string()),
    ("matches", pa.list_(MATCH_TYPE)),  # every item the rule fired for, best first
    # the closest item that shares n-grams without firing (a near miss, to judge the threshold by)
    ("closest_benchmark", pa.string()), ("closest_item_id", pa.string()), ("closest_coverage", pa.float64()),
    # the embedder's nearest benchmark question above the threshold: reported, never a verdict
    ("semantic_benchmark", pa.string()), ("semantic_item_id", pa.string()), ("semantic_similarity", pa.float64()),
])


@dataclass(frozen=True)
class CheckSettings:
    rule: str = "coverage"  # coverage | tulu | any_ngram (ngrams.fired)
    threshold: float = 0.5
    check_responses: bool = True
    semantic_threshold: Optional[float] = None  # None = no semantic signal
    semantic_margin: float = 0.15  # the nearest item must stand this far above the second-nearest
    batch_rows: int = 5000


@dataclass
class CheckResult:
    table: pa.Table
    rows_in: int
    by_asset: dict = field(default_factory=dict)  # record asset -> {rows, contaminated}
    by_benchmark: dict = field(default_factory=dict)  # benchmark -> {rows, items}
    semantic: int = 0


def user_text(row: dict) -> str:
    """The prompt side of a record: every user turn of `messages` (a multi-turn prompt is checked
    whole), else `prompt`."""
    turns = [m.get("content") or "" for m in (row.get("messages") or []) if m.get("role") == "user"]
    return "\n".join(t for t in turns if t) or (row.get("prompt") or "")


def response_text(asset: str, row: dict) -> str:
    return "\n".join(row.get(c) or "" for c in RESPONSE_COLUMNS[asset] if row.get(c))


def check_records(tables: dict[str, pa.Table], matcher: Matcher, settings: CheckSettings,
                  vectors: Optional[dict[str, np.ndarray]] = None, item_vectors: Optional[np.ndarray] = None,
                  item_keys: Optional[list[tuple[str, str]]] = None, log=None) -> CheckResult:
    """One output row per record of each record table (rows in = rows out: nothing is removed here;
    the export decides). `vectors`: all_prompt_id -> the prompt's unit embedding (prompt_embeddings),
    with `item_vectors` / `item_keys` (benchmark, item_id) of the benchmark questions: the semantic
    candidates."""
    out, by_asset, by_bench, semantic, rows_in = [], {}, {}, 0, 0
    for asset in RECORD_ASSETS:
        table = tables.get(asset)
        if table is None or not table.num_rows:
            by_asset[asset] = {"rows": 0, "contaminated": 0}
            continue
        cols = [c for c in ("all_prompt_id", "source", "prompt", "messages", *RESPONSE_COLUMNS[asset])
                if c in table.column_names]
        flagged = 0
        for start in range(0, table.num_rows, settings.batch_rows):
            rows = table.slice(start, settings.batch_rows).select(cols).to_pylist()
            prompts = [user_text(r) for r in rows]
            responses = [response_text(asset, r) for r in rows] if settings.check_responses else None
            matches = matcher.match(prompts, responses)
            sem = _semantic(rows, vectors, item_vectors, settings.semantic_threshold, settings.semantic_margin)
            for r, ms, s in zip(rows, matches, sem):
                row = _row(asset, r, ms, settings)
                if s is not None and item_keys is not None:
                    (b, i), sim = item_keys[s[0]], s[1]
                    row.update(semantic_benchmark=b, semantic_item_id=i, semantic_similarity=sim)
                    semantic += 1
                flagged += row["contaminated"]
                for m in row["matches"]:
                    st = by_bench.setdefault(m["benchmark"], {"rows": 0, "items": set()})
                    st["items"].add(m["item_id"])
                for b in {m["benchmark"] for m in row["matches"]}:
                    by_bench[b]["rows"] += 1
                out.append(row)
            rows_in += len(rows)
            if log:
                log(f"contamination: {asset} {min(start + settings.batch_rows, table.num_rows)}/{table.num_rows}")
        by_asset[asset] = {"rows": table.num_rows, "contaminated": flagged}
    table = pa.Table.from_pylist(out, schema=CONTAMINATION_SCHEMA)
    return CheckResult(table, rows_in, by_asset,
                       {b: {"rows": v["rows"], "items": len(v["items"])} for b, v in sorted(by_bench.items())},
                       semantic)


def _semantic(rows, vectors, item_vectors, threshold, margin):
    if threshold is None or not vectors or item_vectors is None or not len(item_vectors):
        return [None] * len(rows)
    have = [i for i, r in enumerate(rows) if r["all_prompt_id"] in vectors]
    found = semantic_candidates(np.stack([vectors[rows[i]["all_prompt_id"]] for i in have]) if have
                                else np.zeros((0, item_vectors.shape[1]), np.float32), item_vectors, threshold, margin)
    out = [None] * len(rows)
    for i, f in zip(have, found):
        out[i] = f
    return out


def _match_dict(m: Match) -> dict:
    return {"benchmark": m.benchmark, "item_id": m.item_id, "part": m.part, "field": m.field,
            "coverage": m.coverage, "tulu_coverage": m.tulu_coverage, "shared_ngrams": m.shared_ngrams,
            "span": m.span}


def _row(asset: str, r: dict, ms: list[Match], settings: CheckSettings) -> dict:
    hits = [m for m in ms if fired(m, settings.rule, settings.threshold)]
    near = next((m for m in ms if not fired(m, settings.rule, settings.threshold)), None)
    top = hits[0] if hits else None
    return {"record_asset": asset, "all_prompt_id": r["all_prompt_id"], "source": r.get("source"),
            "contaminated": bool(hits),
            "benchmark": top.benchmark if top else None, "item_id": top.item_id if top else None,
            "coverage": top.coverage if top else None, "span": top.span if top else None,
            "matches": [_match_dict(m) for m in hits],
            "closest_benchmark": near.benchmark if near else None,
            "closest_item_id": near.item_id if near else None,
            "closest_coverage": near.coverage if near else None,
            "semantic_benchmark": None, "semantic_item_id": None, "semantic_similarity": None}


# ----------------------------------------------------------------------------------------- report
REPORT_SCHEMA = pa.schema([
    ("source", pa.string()), ("benchmark", pa.string()), ("benchmark_items", pa.int64()),
    ("items_matched", pa.int64()), ("share", pa.float64()),  # items matched / the benchmark's items
    ("rows_flagged", pa.int64()), ("over_threshold", pa.bool_()),  # share > max_share (Tulu 3: 2%)
    ("semantic_items", pa.int64()),  # benchmark questions some row is the embedder's near neighbour of
    ("examples", pa.list_(pa.struct([("all_prompt_id", pa.string()), ("record_asset", pa.string()),
                                     ("item_id", pa.string()), ("coverage", pa.float64()),
                                     ("span", pa.string())]))),
])


def report(contamination: pa.Table, benchmark_items: dict[str, int], max_share: float, examples: int = 3
           ) -> pa.Table:
    """Per (source, benchmark) with any n-gram or semantic hit: the items matched, their share of the
    benchmark, the rows flagged and a few examples; `over_threshold` is the dataset-level flag."""
    acc: dict[tuple[str, str], dict] = {}
    for r in contamination.to_pylist():
        for m in r["matches"] or []:
            a = acc.setdefault((r["source"], m["benchmark"]), {"items": set(), "rows": set(), "sem": set(), "ex": []})
            a["items"].add(m["item_id"])
            a["rows"].add((r["record_asset"], r["all_prompt_id"]))
            if len(a["ex"]) < examples and all(e["item_id"] != m["item_id"] for e in a["ex"]):
                a["ex"].append({"all_prompt_id": r["all_prompt_id"], "record_asset": r["record_asset"],
                                "item_id": m["item_id"], "coverage": m["coverage"], "span": m["span"]})
        if r["semantic_benchmark"]:
            a = acc.setdefault((r["source"], r["semantic_benchmark"]), {"items": set(), "rows": set(), "sem": set(),
                                                                        "ex": []})
            a["sem"].add(r["semantic_item_id"])
    rows = []
    for (source, bench), a in sorted(acc.items()):
        total = benchmark_items.get(bench, 0)
        share = round(len(a["items"]) / total, 6) if total else 0.0
        rows.append({"source": source, "benchmark": bench, "benchmark_items": total,
                     "items_matched": len(a["items"]), "share": share, "rows_flagged": len(a["rows"]),
                     "over_threshold": share > max_share, "semantic_items": len(a["sem"]), "examples": a["ex"]})
    return pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)


def report_markdown(table: pa.Table, checked: dict[str, int], rule: str, max_share: float) -> str:
    lines = [f"Benchmarks checked: {', '.join(f'{b} ({n})' for b, n in sorted(checked.items())) or '(none)'}; "
             f"rule `{rule}`; a source is over the threshold when it matches more than {max_share:.1%} of a "
             f"benchmark's items.", "",
             "| source | benchmark | items matched | share | rows flagged | over | semantic | example |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_pylist():
        ex = r["examples"][0] if r["examples"] else None
        span = (ex["span"][:60] + "…") if ex and len(ex["span"]) > 60 else (ex["span"] if ex else "")
        lines.append(f"| {r['source']} | {r['benchmark']} | {r['items_matched']}/{r['benchmark_items']} | "
                     f"{r['share']:.2%} | {r['rows_flagged']} | {'**yes**' if r['over_threshold'] else 'no'} | "
                     f"{r['semantic_items']} | {span.replace('|', '/')} |")
    if not table.num_rows:
        lines.append("| (no source shares an n-gram rule match or a semantic candidate with a benchmark) | | | | | | | |")
    return "\n".join(lines)
