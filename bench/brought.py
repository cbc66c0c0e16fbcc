"""The brought datasets' ingest at scale (issue 20): rows/s and peak memory of the merge with the
pairwise, multi_trace and label-filter paths, and what the label filter saves downstream.

    python -m bench.brought [--rows 200000] [--work /tmp/posttrain-brought]

Builds N rows by repeating tests/data/brought's files (each copy's text prefixed "(copy c) ", ids
suffixed, so no row duplicates another) as Parquet, then merges each source in one process, streaming
(iter_rows -> PromptMerger.records, the path merged_prompts takes): OpenMathReasoning with its label
filter (`pass_rate_72b_tir <= 0.1`) and without it, OpenR1-Math (4 traces per problem in `extended`),
Arena battles. One run, ratios against the unfiltered OpenMathReasoning merge. Results: a Markdown table.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
import resource
import time

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "brought"


def _repeat(rows: list[dict], n: int, text_cols: tuple[str, ...], id_col: str | None) -> list[dict]:
    out = []
    for c in range(n // len(rows) + 1):
        for r in rows:
            if len(out) == n:
                return out
            r = dict(r)
            for col in text_cols:
                if isinstance(r.get(col), str):
                    r[col] = f"(copy {c}) {r[col]}"
            if id_col:
                r[id_col] = f"{r[id_col]}-{c}"
            out.append(r)
    return out


def build(work: Path, n: int) -> dict[str, Path]:
    import json

    work.mkdir(parents=True, exist_ok=True)
    omr = pq.read_table(DATA / "openmathreasoning" / "cot_sample.parquet")
    r1 = pq.read_table(DATA / "openr1" / "extended" / "train-00000-of-00001.parquet")
    r1 = r1.filter(pa.compute.not_equal(r1["uuid"], r1["uuid"][5])).to_pylist()  # e6 (short verdict list) out
    for r in r1:  # e4's 120,000-character trace, repeated N/5 times, would be GBs of one text: 2,000 here
        r["generations"] = [g[:2000] for g in r["generations"]]
    arena = [json.loads(x) for x in (DATA / "arena" / "arena_battles.jsonl").read_text().splitlines()]
    for r in arena:  # nested lists of structs as JSON text columns would be what a JSONL gives; parquet keeps them
        r.pop("conv_metadata", None), r.pop("category_tag", None), r.pop("dedup_tag", None)
    paths = {}
    for name, rows, cols, idc in (("omr", omr.to_pylist(), ("problem",), None),
                                  ("openr1", r1, ("problem",), "uuid"),
                                  ("arena", [a for a in arena if a["winner"] != "model_c"], (), "question_id")):
        big = _repeat(rows, n, cols, idc)
        if name == "arena":  # the prompt is in the conversations: prefix both sides' user turns alike
            for i, r in enumerate(big):
                for side in ("conversation_a", "conversation_b"):
                    r[side] = [{**m, "content": f"(copy {i}) {m['content']}"} if m["role"] == "user" else m
                               for m in r[side]]
        paths[name] = work / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(big), paths[name], row_group_size=20_000)
    return paths


def merge(spec) -> tuple[float, int, int, dict, float]:
    """One source's streaming merge, in a fresh process (peak RSS = this merge's, imports included)."""
    from posttrain_assets.ingest.loaders import LoadedRows, iter_rows
    from posttrain_assets.ingest.merging import PromptMerger

    loaded = LoadedRows()
    t0 = time.perf_counter()
    merger = PromptMerger(spec, total_rows=0)
    kept = sum(1 for _ in merger.records(iter_rows(spec, loaded)))
    dt = time.perf_counter() - t0
    acc = merger.accounting(kept)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dt, loaded.rows_read, kept, dict(acc.removed_by_reason + acc.rejected_by_reason), rss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--work", default="/tmp/posttrain-brought")
    args = ap.parse_args(argv)
    from partitions.registry import load_registry

    reg = load_registry(DATA / "registry.yaml")
    paths = build(Path(args.work), args.rows)
    omr = reg.get("openmathreasoning_hard")
    cases = [
        ("openmathreasoning, label_filter", replace(omr, loader=replace(omr.loader, path=str(paths["omr"])))),
        ("openmathreasoning, no filter", replace(omr, label_filter=(), loader=replace(omr.loader, path=str(paths["omr"])))),
        ("openr1 extended (multi_trace)", replace(reg.get("openr1_math"), fields={"id": "uuid"},
                                                  loader=replace(omr.loader, path=str(paths["openr1"])))),
        ("arena (pairwise)", replace(reg.get("arena_battles"), loader=replace(omr.loader, path=str(paths["arena"])))),
    ]
    import multiprocessing

    rows = []
    ctx = multiprocessing.get_context("spawn")
    for name, spec in cases:
        with ctx.Pool(1) as pool:
            dt, n, kept, reasons, rss = pool.apply(merge, (spec,))
        rows.append((name, n, kept, dt, n / dt, reasons, rss))
    base = next(r[4] for r in rows if "no filter" in r[0])
    print("| source | rows read | records kept | seconds | rows/s | vs unfiltered OMR | peak RSS MB | reasons |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, kept, dt, rate, reasons, rss in rows:
        top = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        print(f"| {name} | {n:,} | {kept:,} | {dt:.1f} | {rate:,.0f} | {rate / base:.2f} | {rss:,.0f} | {top} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
