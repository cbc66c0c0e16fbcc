"""The Hugging Face Parquet layout: deterministic splits, shards, the dataset card."""

import hashlib
import os
import shutil
from typing import Optional
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from resources.hub import sha256_file
from resources.reasons import Reason

from ..common import asset_names as A
from ..common.accounting import RowIssue
from ..common.schemas import MESSAGE_TYPE

CONFIGS = ("sft", "cot", "preference", "evol", "generated", "preference_synthetic", "steerlm")
#: the column whose hash picks a row's split: an evolved prompt goes with its seed, every solution
#: of a problem with the problem (no seed or problem on both sides of a train / test split)
SPLIT_KEY = {"evol": "parent_id", "steerlm": "id"}  # steerlm: the labelled row's id (all_prompt_id for sft_records)
MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()), ("config", pa.string()), ("split", pa.string()), ("rows", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("upload", pa.string()),
])


#: `generated`: the kept solutions as (problem, solution, answer, pass rate) + provenance
GENERATED_COLUMNS = {"all_prompt_id": "all_prompt_id", "source": "source", "language": "language",
                     "sample": "sample", "prompt": "problem", "solution": "solution", "final_answer": "answer",
                     "gold_answer": "gold_answer", "correct": "correct", "verifier": "verifier",
                     "pass_rate": "pass_rate", "generator_model": "generator_model", "judge_model": "judge_model"}


def generated_config(solutions: pa.Table) -> pa.Table:
    """generated_solutions rows in the export's column names (problem, solution, answer, pass_rate ...)."""
    return solutions.select(list(GENERATED_COLUMNS)).rename_columns(list(GENERATED_COLUMNS.values()))


#: `preference_synthetic`: preference_pairs in TRL's conversational preference format (`prompt` = the
#: prompt conversation, `chosen` / `rejected` = one assistant message each) + provenance columns
PREFERENCE_SYNTHETIC_PROVENANCE = ["id", "all_prompt_id", "input_asset", "source", "language", "chosen_score",
                                   "rejected_score", "margin", "chosen_model", "rejected_model",
                                   "chosen_temperature", "rejected_temperature", "reward_model", "n_candidates"]


def preference_synthetic_config(pairs: pa.Table) -> pa.Table:
    """preference_pairs rows as DPO trainers read them (TRL's conversational preference format):
    `prompt` = list of {role, content} (multi-turn kept, no assistant answer at the end), `chosen` and
    `rejected` = a list of one assistant message each; then the provenance columns.

    A config of its own, not mixed into `preference`: (1) `preference` holds human-labelled or
    source-ranked pairs as flat strings (prompt, chosen, rejected), and one config has one schema —
    TRL's format needs message lists; (2) these pairs are model-written and model-judged (on the CPU
    default a 135M judge whose scores carry no signal), so a trainer must opt in to them, never get
    them silently mixed with human preferences; (3) they exist only where the on-demand synthesis ran,
    like `evol` and `generated`."""
    def one_turn(col: str) -> pa.Array:
        texts = pairs[col].combine_chunks() if pairs.num_rows else pa.array([], pa.string())
        structs = pa.StructArray.from_arrays([pa.array(["assistant"] * len(texts), pa.string()), texts],
                                             names=["role", "content"])
        return pa.ListArray.from_arrays(pa.array(range(0, len(texts) + 1), pa.int32()), structs)

    cols = {"prompt": pairs["messages"].combine_chunks() if pairs.num_rows else pa.array([], MESSAGE_TYPE),
            "chosen": one_turn("chosen"), "rejected": one_turn("rejected")}
    cols.update({c: pairs[c] for c in PREFERENCE_SYNTHETIC_PROVENANCE})
    return pa.table(cols)


#: `preference` config layouts (HfParquetConfig.preference_format): `both` = the record schema (prompt,
#: chosen, rejected as strings + chosen_messages / rejected_messages), `trl` = TRL's conversational
#: preference format with an implicit prompt (chosen / rejected = each side's whole conversation)
PREFERENCE_FORMATS = ("both", "trl")


def preference_config(records: pa.Table, fmt: str = "both") -> pa.Table:
    """preference_records rows as the `preference` config: as they are (`both`), or (`trl`) with
    `chosen` / `rejected` = the message lists (every turn of each side; DPOTrainer takes the shared
    prefix as the prompt) and the string columns left out; provenance columns kept either way."""
    if fmt not in PREFERENCE_FORMATS:
        raise ValueError(f"preference_format must be one of {', '.join(PREFERENCE_FORMATS)}, got {fmt!r}")
    if fmt == "both" or "chosen_messages" not in records.column_names:
        return records
    drop = {"prompt", "chosen", "rejected", "messages", "chosen_messages", "rejected_messages"}
    cols = {"chosen": records["chosen_messages"], "rejected": records["rejected_messages"]}
    cols.update({c: records[c] for c in records.column_names if c not in drop})
    return pa.table(cols)


def split_of(ids: list[str], test_fraction: float, seed: str = "posttrain") -> list[str]:
    """Deterministic train/test assignment by a hash of the id (stable when rows are added)."""
    if test_fraction <= 0:
        return ["train"] * len(ids)
    cut = int(test_fraction * 2**32)
    return ["test" if int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest(), "big") < cut
            else "train" for i in ids]


def shard(table: pa.Table, max_shard_bytes: int) -> list[pa.Table]:
    """Consecutive slices of at most ~max_shard_bytes (in-memory Arrow size) each."""
    if table.num_rows == 0:
        return []
    per_row = max(1, table.nbytes // table.num_rows)
    rows = max(1, max_shard_bytes // per_row)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def write_dataset(tables: dict[str, pa.Table], out_dir: str, *, max_shard_bytes: int,
                  test_fraction: float = 0.0) -> list[dict]:
    """Write data/<config>/<split>-*.parquet into a fresh staging folder, then swap it in (no stale
    shards survive a re-export). Returns one manifest row per file."""
    os.makedirs(out_dir, exist_ok=True)
    staging = os.path.join(out_dir, f".staging-{uuid.uuid4().hex[:8]}")
    manifest = []
    try:
        for config in CONFIGS:
            t = tables.get(config)
            if t is None or t.num_rows == 0:
                continue
            splits = pa.array(split_of(t[SPLIT_KEY.get(config, "all_prompt_id")].to_pylist(), test_fraction))
            for split in ("train", "test"):
                part = t.filter(pc.equal(splits, split))
                shards = shard(part, max_shard_bytes)
                for i, s in enumerate(shards):
                    rel = f"data/{config}/{split}-{i:05d}-of-{len(shards):05d}.parquet"
                    full = os.path.join(staging, rel)
                    os.makedirs(os.path.dirname(full), exist_ok=True)
                    pq.write_table(s, full, compression="zstd")
                    manifest.append({"path": rel, "config": config, "split": split, "rows": s.num_rows,
                                     "bytes": os.path.getsize(full), "sha256": sha256_file(full)})
        old = os.path.join(out_dir, "data")
        if os.path.isdir(old):
            shutil.rmtree(old)
        if os.path.isdir(os.path.join(staging, "data")):
            os.replace(os.path.join(staging, "data"), old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def dataset_card(manifest: list[dict], sources: list[dict], produced_by: dict, *,
                 title: str, body: Optional[str] = None, decontamination: Optional[dict] = None,
                 hygiene: Optional[dict] = None) -> str:
    """README.md with the YAML `configs` block `datasets` reads, counts, sources and provenance.
    A user-supplied `body` is kept verbatim after the generated header."""
    configs = []
    for config in CONFIGS:
        splits = sorted({m["split"] for m in manifest if m["config"] == config}, key=["train", "test"].index)
        if splits:
            configs.append({"config_name": config,
                            "data_files": [{"split": s, "path": f"data/{config}/{s}-*"} for s in splits]})
    licences = sorted({s["licence"] for s in sources})
    front = {"configs": configs, "license": "other", "license_name": "mixed (see Sources)",
             "tags": ["posttrain", "sft", "preference", "synthetic"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines += ["| config | split | rows | files |", "|---|---|---|---|"]
    for c in configs:
        for df in c["data_files"]:
            files = [m for m in manifest if m["config"] == c["config_name"] and m["split"] == df["split"]]
            lines.append(f"| {c['config_name']} | {df['split']} | {sum(m['rows'] for m in files):,} | {len(files)} |")
    lines += ["", "## Sources", "", "| source | kind | licence | " + " | ".join(CONFIGS) + " |",
              "|---|---|---|" + "---|" * len(CONFIGS)]
    for s in sources:
        lines.append(f"| {s['key']} | {s['kind']} | {s['licence']} | "
                     + " | ".join(str(s.get(c, 0)) for c in CONFIGS) + " |")
    lines += ["", f"Licences involved: {', '.join(licences)}. Each row keeps its `source`; respect the "
              "licence of the source it came from.", "", "## How it was produced", "",
              "Materialised by the posttrain Dagster asset graph: raw_records -> merged_prompts -> "
              "prompt_embeddings -> dedup_clusters -> deduplicated_prompts -> sft_records / cot_records / "
              "preference_records -> hf_parquet; `evol`: selected_seeds -> evolved_instructions (Evol-Instruct, "
              "judged, answered by the generator model); `generated`: selected_seeds -> generated_solutions (n "
              "solutions per problem, verified against the gold answer; pass_rate = correct / n); "
              "`preference_synthetic`: a prompt table -> preference_pairs (n candidate responses per prompt, "
              "scored by the reward model named in each row; chosen = best, rejected = worst; TRL's "
              "conversational preference format); `steerlm`: sft_records -> attribute_labelled_sft -> "
              "steerlm_sft (attributes predicted by the attribute model whose version each row names, in NeMo's "
              "SteerLM format and the llm-jp-sft format). Synthetic rows "
              "were written by the models named in `produced_by` and in each row.", "", "```yaml",
              yaml.safe_dump(produced_by, sort_keys=True).strip(), "```", ""]
    if decontamination is not None:
        lines += decontamination_lines(decontamination)
    if hygiene is not None:
        lines += hygiene_lines(hygiene)
    if body:
        lines += ["", body.strip(), ""]
    return "\n".join(lines)


def decontamination_lines(d: dict) -> list[str]:
    """The card's section: the benchmarks checked, the method, the rows left out per config and benchmark."""
    lines = ["## Decontamination", "",
             f"Checked against {len(d['benchmarks'])} benchmarks: "
             + ", ".join(f"{b} ({v['items']} items, {v['language']})" for b, v in sorted(d["benchmarks"].items()))
             + f". Method: prompts (every user turn) and responses against the items' questions and reference "
               f"answers; tokens by script (words; single Japanese / Chinese characters), n-grams of {d['n']} "
               f"words / {d['cjk_n']} characters, rule `{d['rule']}`, threshold {d['threshold']}.",
             ""]
    if not d["leave_out"]:
        lines.append("Contaminated rows were **kept** (`leave_out_contaminated: false`).")
    removed = d["removed"]
    if removed:
        lines += ["| config | benchmark | rows left out |", "|---|---|---|"]
        for config in sorted(removed):
            for bench, n in sorted(removed[config].items()):
                lines.append(f"| {config} | {bench} | {n} |")
    else:
        lines.append("No row matched a benchmark item.")
    return lines + [""]


def hygiene_lines(h: dict) -> list[str]:
    """The card's section: the rules and their actions, the phrase lists' version, and per config the rows
    each rule dropped and flagged (the sources whose clean tables were read)."""
    lines = ["## Hygiene", "",
             "Rule-based filters over every response (posttrain `hygiene` stage, no model): "
             + ", ".join(f"`{r}` ({a})" for r, a in h["rules"].items())
             + f". Phrase lists version {', '.join(map(str, h['lists_version'])) or '-'}. A dropped row is left "
               "out; a flagged row is kept and names the rule in its `hygiene_flags` column.", ""]
    for source, rules in h.get("overrides", {}).items():
        lines.append(f"- `{source}` was filtered with " + ", ".join(f"`{r}` ({a})" for r, a in rules.items()))
    if h.get("overrides"):
        lines.append("")
    if not h["use"]:
        return lines + ["The export read the tables **before** hygiene (`use_hygiene: false`).", ""]
    if not h["configs"]:
        return lines + ["No clean table was read: the hygiene stage has not run for the exported sources.", ""]
    lines += ["| config | sources filtered | sources not filtered | rule | dropped | flagged |", "|---|---|---|---|---|---|"]
    for config, c in sorted(h["configs"].items()):
        rules = sorted(set(c["dropped"]) | set(c["flagged"])) or ["(none fired)"]
        for r in rules:
            lines.append(f"| {config} | {c['clean_sources']} | {c['raw_sources']} | {r} | {c['dropped'].get(r, 0)} | "
                         f"{c['flagged'].get(r, 0)} |")
    return lines + [""]


#: the record tables the export reads, by the config each becomes (contamination's `record_asset`)
EXPORT_CONFIG_OF = {A.SFT_RECORDS: "sft", A.COT_RECORDS: "cot", A.PREFERENCE_RECORDS: "preference"}


def leave_out(tables: dict[str, pa.Table], contamination: pa.Table) -> tuple[dict[str, pa.Table], list[RowIssue],
                                                                          dict[str, dict[str, int]]]:
    """The export's tables without their contaminated records (matched by record table and
    all_prompt_id): (tables, one removed RowIssue per row naming the benchmark item, counts per
    export config and benchmark)."""
    flagged: dict[str, dict[str, dict]] = {}
    for r in contamination.filter(contamination["contaminated"]).to_pylist() if contamination.num_rows else []:
        flagged.setdefault(EXPORT_CONFIG_OF[r["record_asset"]], {})[r["all_prompt_id"]] = r
    out, issues, counts = dict(tables), [], {}
    for config, hits in flagged.items():
        table = tables.get(config)
        if table is None or not table.num_rows:
            continue
        ids = table["all_prompt_id"].to_pylist()
        keep = [i not in hits for i in ids]
        for row, (pid, k) in enumerate(zip(ids, keep)):
            if not k:
                h = hits[pid]
                counts.setdefault(config, {}).setdefault(h["benchmark"], 0)
                counts[config][h["benchmark"]] += 1
                issues.append(RowIssue(reason=Reason.CONTAMINATED, source_row=row, source_file=config, field="prompt",
                                       outcome="removed", detail=f"{pid}: benchmark {h['benchmark']!r} item "
                                                                 f"{h['item_id']!r} (coverage {h['coverage']})",
                                       duplicate_of=f"{h['benchmark']}:{h['item_id']}", raw=(h["span"] or "")[:200]))
        out[config] = table.filter(pa.array(keep))
    return out, issues, counts
