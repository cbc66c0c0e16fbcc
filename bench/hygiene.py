"""The hygiene rules: throughput at a million rows, and what each rule removes from real data.

`python -m bench.hygiene [--rows 1000000]`: real prompt / response pairs of the bundled sources (HelpSteer,
HelpSteer2, OASST2-ja (its Japanese), the KTO mix, RealPersonaChat's Japanese GPT-4 / GPT-3.5
dialogues, Magpie's responses, the tests' constructed en / ja / zh cases), cycled to `--rows` rows,
through `apply_hygiene` with every rule on: one process on the first `--single` rows, then every core
on all of them (worker processes), in one run; rows/s of each and their ratio.

`python -m bench.hygiene --report STORAGE [--out FILE]`: over a finished demo run's storage (the record
tables and the synthetic ones of every source) and the shared data the tests read (RealPersonaChat,
the Magpie sample, OASST2-ja in Japanese and across languages), with the stage's default actions, the
share each rule finds alone per table and source, and three examples per rule (the matched span): the
table in docs/stages/hygiene.md."""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from posttrain_assets.hygiene.assets import HygieneConfig, settings_for
from posttrain_assets.hygiene.filtering import Settings, TableSpec, apply_hygiene
from posttrain_assets.hygiene.rules import RULES
from posttrain_assets.hygiene.tables import TABLES

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "posttrain_assets" / "sample_data"
HYGIENE_DATA = REPO / "tests" / "data" / "hygiene"
SPEC = TableSpec("id", "prompt", (("response", "response"),))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def real_pairs() -> list[tuple[str, str]]:
    """(prompt, response) pairs of the bundled real data."""
    pairs = [(r["prompt"], r["response"]) for f in ("helpsteer/helpsteer_train_500.jsonl",
                                                    "helpsteer2/helpsteer2_train_head100.jsonl")
             for r in _jsonl(SAMPLE / f)]
    flat = json.loads((SAMPLE / "oasst2_ja_edited" / "edited_data_flat.json").read_text(encoding="utf-8"))
    pairs += [(flat[m["parent_id"]]["text_ja_audited"], m["text_ja_audited"]) for m in flat.values()
              if m["role"] == "assistant" and m.get("parent_id") in flat]
    kto = json.loads((SAMPLE / "messages_kto_mix" / "kto_en_demo_40.json").read_text(encoding="utf-8"))
    pairs += [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in kto]
    for name in ("GPT-4.json", "GPT-3.5+persona+personality.json"):
        for d in json.loads((HYGIENE_DATA / "realpersonachat" / name).read_text(encoding="utf-8")):
            u = d["utterances"]
            pairs += [(a["text"], b["text"]) for a, b in zip(u, u[1:])
                      if a["interlocutor"] == "user" and b["interlocutor"] == "system"]
    for r in json.loads((HYGIENE_DATA / "magpie" / "example_instructions_5res_armorm.json").read_text(encoding="utf-8")):
        pairs += [(r["instruction"], x) for x in r["responses"]]
    sys.path.insert(0, str(REPO))
    from tests.test_hygiene import CASES

    return pairs + [(p, r) for p, r, _ in CASES]


def throughput(rows: int, single: int) -> None:
    pairs = real_pairs()
    base = pa.table({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})
    table = pa.concat_tables([base] * (rows // len(pairs) + 1)).slice(0, rows)  # chunks share the base's memory
    table = table.add_column(0, "id", pa.array(range(rows), pa.int64()).cast(pa.string()))
    settings = Settings(actions={r: "drop" for r in RULES})
    chars = sum(len(p) + len(r) for p, r in pairs) / len(pairs)
    print(f"{len(pairs)} distinct real pairs ({chars:,.0f} characters per row), cycled to {rows:,} rows; "
          f"{os.cpu_count()} cores")
    t = time.perf_counter()
    one = apply_hygiene(table.slice(0, single), SPEC, settings, workers=1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    res = apply_hygiene(table, SPEC, settings, workers=0,
                        progress=lambda d, n: print(f"  {d:,}/{n:,}", end="\r", flush=True))
    t2 = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n| run | rows | seconds | rows/s |\n|---|---|---|---|\n| 1 process | {single:,} | {t1:.1f} | "
          f"{single / t1:,.0f} |\n| {os.cpu_count()} processes | {rows:,} | {t2:.1f} | {rows / t2:,.0f} |")
    print(f"parallel / single rows/s: {(rows / t2) / (single / t1):.2f}x; kept {res.kept.num_rows:,} of {rows:,}; "
          f"peak RSS of the parent {rss:,.0f} MB; per rule (fires alone): "
          + ", ".join(f"{r} {p['share']:.2%}" for r, p in res.per_rule.items() if p["fires"]))
    assert one.kept.num_rows <= single


def _partitions(root: str, asset: str) -> dict[str, pa.Table]:
    out = {}
    for f in sorted(glob.glob(f"{root}/{asset}/source=*/*.parquet")):
        out[f.split("source=")[1].split("/")[0]] = pq.read_table(f)
    return out


def shared_tables() -> dict[str, pa.Table]:
    """The real rows of tests/data/hygiene and OASST2-ja, as (id, prompt, response) tables: RealPersonaChat's
    Japanese dialogues, Magpie's 25 responses, and OASST2-ja's pairs in Japanese and across languages (its
    messages are held in Japanese and in their original English)."""
    out = {}
    for name in ("GPT-4.json", "GPT-3.5+persona+personality.json"):
        rows = []
        for d in json.loads((HYGIENE_DATA / "realpersonachat" / name).read_text(encoding="utf-8")):
            u = d["utterances"]
            rows += [{"id": f"{d['dialogue_id']}:{b['utterance_id']}", "prompt": a["text"], "response": b["text"]}
                     for a, b in zip(u, u[1:]) if a["interlocutor"] == "user" and b["interlocutor"] == "system"]
        out[f"realpersonachat {name[:-5]}"] = pa.Table.from_pylist(rows)
    rows = [{"id": f"{r['uuid']}:{k}", "prompt": r["instruction"], "response": x}
            for r in json.loads((HYGIENE_DATA / "magpie" / "example_instructions_5res_armorm.json").read_text(
                encoding="utf-8")) for k, x in enumerate(r["responses"])]
    out["magpie_sample (5 x 5 responses)"] = pa.Table.from_pylist(rows)
    flat = json.loads((SAMPLE / "oasst2_ja_edited" / "edited_data_flat.json").read_text(encoding="utf-8"))
    pairs = [(flat[m["parent_id"]], m) for m in flat.values() if m["role"] == "assistant" and m.get("parent_id") in flat]
    for label, pf, af in (("ja -> ja", "text_ja_audited", "text_ja_audited"), ("ja -> en", "text_ja_audited", "text"),
                          ("en -> ja", "text", "text_ja_audited")):
        out[f"oasst2_ja_edited {label}"] = pa.Table.from_pylist(
            [{"id": m["message_tree_id"][:8] + f":{i}", "prompt": p[pf], "response": m[af]} for i, (p, m) in enumerate(pairs)])
    return out


def report(root: str) -> str:
    defaults = settings_for(HygieneConfig(), "")
    lines = ["| table | source | rows | " + " | ".join(RULES) + " | dropped |", "|---|---|---|" + "---|" * (len(RULES) + 1)]
    examples: dict[str, list] = defaultdict(list)
    runs = [(asset, key, table, spec) for asset, (_, spec) in TABLES.items()
            for key, table in _partitions(root, asset).items()]
    runs += [("shared data (tests)", key, table, SPEC) for key, table in shared_tables().items()]
    for asset, key, table, spec in runs:
        if not table.num_rows:
            continue
        res = apply_hygiene(table, spec, defaults, workers=1)
        cells = [f"{res.per_rule[r]['share']:.1%}" if res.per_rule[r]["fires"] else "" for r in RULES]
        lines.append(f"| {asset} | {key} | {table.num_rows} | " + " | ".join(cells) + f" | {len(res.dropped)} |")
        for r, ex in res.examples.items():
            examples[r] += [(asset, key, e) for e in ex]
    lines += ["", "Three examples per rule (the first found, by table and source):", ""]
    for r in RULES:
        for asset, key, e in examples.get(r, [])[:3]:
            span = " ".join(e["span"].split())[:100].replace("|", "\\|")
            detail = f" ({e['detail']})" if e["detail"] else ""
            lines.append(f"- `{r}` / {e['reason']}: {asset} `{key}` {e['id']}: \"{span}\"{detail}")
        if not examples.get(r):
            lines.append(f"- `{r}`: none in these tables")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--single", type=int, default=50_000, help="rows for the one-process run")
    ap.add_argument("--report", metavar="STORAGE", help="a demo run's storage root: the per-rule shares")
    ap.add_argument("--out", help="write the report here (default: stdout)")
    args = ap.parse_args()
    if args.report:
        text = report(args.report)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
        return
    throughput(args.rows, min(args.single, args.rows))


if __name__ == "__main__":
    main()
