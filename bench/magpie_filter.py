"""Benchmark: the share of instructions each rule of Magpie's filter removes (not a test).

    .venv/bin/python -m bench.magpie_filter [TABLE ...] [--min-reward X] [--min-length N] ...

Each TABLE is a quality_tags Parquet file (e.g. storage/quality_tags/source=<key>/data.parquet) or a
Magpie JSON Lines / JSON file with Magpie's released column names (`uuid`, `instruction`,
`input_quality`, `difficulty`, `instruct_reward`, `min_similar_uuid`, `repeat_count`, `language`,
`llama_guard_2`). Without arguments: ../shared/data/magpie_sample/example_instructions.jsonl
(magpie-align/magpie: 5 Llama-3-tagged instructions), which carries quality and difficulty tags but
no reward and no neighbour columns: a rule whose columns a table lacks is reported as `n/a` and
left out, never counted as missing tags. Prints per table and rule: the rows it alone removes and
their share, of which for a missing tag, and the rows it drops first in the fixed rule order
(selection/tag_filter.py); writes bench/results/magpie_filter.json.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from posttrain_assets.common.language import detect_language
from posttrain_assets.selection.tag_filter import RULE_COLUMNS, FilterRules, apply_filter

from .common import RESULTS, SHARED

DEFAULT = SHARED / "magpie_sample" / "example_instructions.jsonl"
#: Magpie's released column names -> quality_tags'
MAGPIE_NAMES = {"uuid": "id", "min_similar_uuid": "min_similar_id", "min_similar_conversation_id": "min_similar_id"}


def load(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    out = []
    for r in rows:
        r = {MAGPIE_NAMES.get(k, k): v for k, v in r.items()}
        if "llama_guard_2" in r and "safety" not in r:  # Magpie's raw guard answer: first line
            r["safety"] = (r["llama_guard_2"] or "").strip().split("\n")[0] or None
        r.setdefault("language", detect_language(r.get("instruction")))
        out.append({k: v for k, v in r.items() if not isinstance(v, (dict, list))})
    return pa.Table.from_pylist(out)


def usable(rules: FilterRules, table: pa.Table) -> tuple[FilterRules, list[str]]:
    """The rules with those whose columns the table lacks switched off (named in the second value)."""
    off = [r for r in rules.active() if any(c not in table.column_names for c in RULE_COLUMNS[r])]
    switch = {"input_quality": {"qualities": ()}, "instruct_reward": {"min_reward": None},
              "colon": {"no_trailing_colon": False}, "near_duplicate": {"drop_near_duplicates": False},
              "length": {"min_length": None, "max_length": None},
              "difficulty": {"min_difficulty": None, "max_difficulty": None}, "safety": {"safe_only": False}}
    for r in off:
        rules = replace(rules, **switch[r])
    return rules, off


def report(path: Path, rules: FilterRules) -> dict:
    table = load(path)
    rules, off = usable(rules, table)
    res = apply_filter(table, rules)
    n = table.num_rows
    first = {}
    for _, rule, _ in res.dropped:
        first[rule] = first.get(rule, 0) + 1
    print(f"\n{path} ({n} rows): kept {res.kept.num_rows} ({res.kept.num_rows / n:.0%})" if n else f"\n{path}: 0 rows")
    print(f"  {'rule':16} {'removes alone':>13} {'share':>7} {'missing tag':>11} {'dropped first':>13}")
    for r in res.active:
        p = res.per_rule[r]
        print(f"  {r:16} {p['removes']:>13} {p['share']:>7.1%} {p['missing']:>11} {first.get(r, 0):>13}")
    for r in off:
        print(f"  {r:16} {'n/a (no ' + ', '.join(c for c in RULE_COLUMNS[r] if c not in table.column_names) + ')':>13}")
    return {"rows": n, "kept": res.kept.num_rows, "per_rule": res.per_rule, "dropped_first": first,
            "removed_by_reason": dict(res.removed_by_reason), "rules_not_applicable": off}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="*", type=Path)
    ap.add_argument("--qualities", default="good,excellent")
    ap.add_argument("--min-reward", type=float, default=None)
    ap.add_argument("--min-length", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--min-difficulty", default=None)
    ap.add_argument("--max-difficulty", default=None)
    ap.add_argument("--safe-only", action="store_true")
    args = ap.parse_args()
    rules = FilterRules(qualities=tuple(q for q in args.qualities.split(",") if q), min_reward=args.min_reward,
                        min_length=args.min_length, max_length=args.max_length, min_difficulty=args.min_difficulty,
                        max_difficulty=args.max_difficulty, safe_only=args.safe_only)
    tables = args.tables or [DEFAULT]
    results = {str(p): report(p, rules) for p in tables}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "magpie_filter.json"
    out.write_text(json.dumps({"rules": {**rules.__dict__, "qualities": list(rules.qualities)}, "tables": results},
                              indent=2, ensure_ascii=False))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
