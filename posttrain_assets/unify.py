"""Unify stage: the deduplicated prompts of each source -> the seed's three record schemas.

- `sft_records`  (kinds sft, attributes): prompt -> answer; OASST: the best-ranked reply per prompt.
- `cot_records`  (kind cot): prompt -> thinking + answer (GSM8K '####', <think>…</think>, \\boxed{}).
- `preference_records` (kind preference; and ranked replies of any source): prompt, chosen, rejected.

A source whose kind a schema does not take gives an empty table (metadata `applies: false`).
"""

import json
import re
from collections import defaultdict
from typing import Optional

import dagster as dg
import pyarrow as pa

from partitions import source_partitions
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from .accounting import Accounting, RowIssue, rejects_table
from .adapters import GSM8K_FINAL
from .merging import MESSAGE_TYPE
from .metadata import accounting_check, stage_metadata, unique_check

GROUP = "unify"
SFT_KINDS = ("sft", "attributes")
COT_KINDS = ("cot",)

SFT_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("answer", pa.string()), ("metadata", pa.string()), ("source", pa.string()),
    ("messages", MESSAGE_TYPE),  # the whole conversation, answer included
])
COT_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("thinking", pa.string()), ("answer", pa.string()), ("metadata", pa.string()),
    ("source", pa.string()), ("split_rule", pa.string()),
])
PREFERENCE_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("chosen", pa.string()), ("rejected", pa.string()), ("metadata", pa.string()),
    ("source", pa.string()), ("messages", MESSAGE_TYPE),  # the prompt conversation (multi-turn kept)
    ("tie", pa.bool_()), ("rejected_id", pa.string()),  # ranked replies: the rejected reply's record
])


def _issue(rec: dict, reason: str, detail: str = "", outcome: str = "removed") -> RowIssue:
    return RowIssue(reason=reason, outcome=outcome, source_row=rec["source_row"],
                    source_file=rec["source_file"], detail=detail, raw=rec["prompt"][:2000])


# ------------------------------------------------------------------------------------ SFT


def sft_from(prompts: pa.Table, best_reply_only: bool = True) -> tuple[pa.Table, list[RowIssue]]:
    rows, issues = [], []
    recs = prompts.to_pylist()
    best_rank: dict[str, int] = {}
    for r in recs:
        if r["response"] is not None and r["rank"] is not None:
            best_rank[r["prompt"]] = min(best_rank.get(r["prompt"], r["rank"]), r["rank"])
    for r in recs:
        if r["response"] is None or not r["response"].strip():
            issues.append(_issue(r, "no_response", "prompt without an answer (a seed for synthesis)"))
            continue
        if best_reply_only and r["rank"] is not None and r["rank"] != best_rank[r["prompt"]]:
            issues.append(_issue(r, "not_best_reply", f"rank {r['rank']} > best {best_rank[r['prompt']]}"))
            continue
        rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                     "prompt": r["prompt"], "answer": r["response"], "metadata": r["metadata"],
                     "source": r["source"],
                     "messages": list(r["messages"]) + [{"role": "assistant", "content": r["response"]}]})
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA), issues


# ------------------------------------------------------------------------------------ CoT

THINK = re.compile(r"<think>(.*?)</think>(.*)", re.S)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def split_reasoning(text: str, reference_answer: Optional[str] = None) -> tuple[str, str, str]:
    """(thinking, answer, rule). When the two cannot be separated, everything is thinking and the
    answer is "" (rule 'unsplit'), as the seed does for LIMO / NuminaMath."""
    m = THINK.search(text)
    if m:
        return m.group(1).strip(), m.group(2).strip(), "think_tags"
    if GSM8K_FINAL in text:
        body, final = text.rsplit(GSM8K_FINAL, 1)
        return body.strip(), final.strip().replace(",", ""), "gsm8k_marker"
    boxed = last_boxed(text)
    if boxed is not None:
        return text.strip(), boxed, "boxed"
    return text.strip(), "", "unsplit"


def cot_from(prompts: pa.Table) -> tuple[pa.Table, list[RowIssue]]:
    rows, issues = [], []
    for r in prompts.to_pylist():
        if r["response"] is None or not r["response"].strip():
            issues.append(_issue(r, "no_response", "no solution to split"))
            continue
        thinking, answer, rule = split_reasoning(r["response"], r["reference_answer"])
        rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                     "prompt": r["prompt"], "thinking": thinking, "answer": answer,
                     "metadata": r["metadata"], "source": r["source"], "split_rule": rule})
    return pa.Table.from_pylist(rows, schema=COT_SCHEMA), issues


# ------------------------------------------------------------------------------ preference


def preference_from(prompts: pa.Table, kind: str) -> tuple[pa.Table, list[RowIssue]]:
    """Preference sources map row by row; other sources pair each prompt's best and worst ranked reply."""
    rows, issues = [], []
    recs = prompts.to_pylist()
    if kind == "preference":
        for r in recs:
            if r["chosen"] is None or r["rejected"] is None:
                issues.append(_issue(r, "no_pair", "chosen or rejected missing", outcome="rejected"))
                continue
            tie = r["preference_score"] == 0 if r["preference_score"] is not None else False
            rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                         "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                         "metadata": r["metadata"], "source": r["source"], "messages": r["messages"],
                         "tie": tie, "rejected_id": None})
        return pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA), issues
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r["response"] is not None and r["rank"] is not None:
            by_prompt[r["prompt"]].append(r)
        else:
            issues.append(_issue(r, "no_ranked_reply"))
    for group in by_prompt.values():
        ranks = sorted(group, key=lambda r: (r["rank"], r["all_prompt_id"]))
        best, worst = ranks[0], ranks[-1]
        if len(ranks) < 2 or best["rank"] == worst["rank"]:
            issues.extend(_issue(r, "no_ranked_pair", "fewer than two differently ranked replies") for r in ranks)
            continue
        rows.append({"all_prompt_id": best["all_prompt_id"], "source_prompt_id": best["source_prompt_id"],
                     "prompt": best["prompt"], "chosen": best["response"], "rejected": worst["response"],
                     "metadata": json.dumps({"chosen": json.loads(best["metadata"]),
                                             "rejected": json.loads(worst["metadata"])}, ensure_ascii=False),
                     "source": best["source"], "messages": best["messages"], "tie": False,
                     "rejected_id": worst["all_prompt_id"]})
        issues.extend(_issue(r, "paired", f"in the pair of {best['all_prompt_id']}") for r in ranks[1:])
    return pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA), issues


# ---------------------------------------------------------------------------------- assets


class SftConfig(dg.Config):
    best_reply_only: bool = True  # ranked replies (OASST): keep only the best-ranked one per prompt


class PreferenceConfig(dg.Config):
    from_ranked_replies: bool = True  # pair best vs worst ranked reply of sft/attributes sources


def _emit(context, storage: StorageResource, spec, table: pa.Table, issues: list[RowIssue],
          applies: bool, upstream_rows: int, text_column: str = "prompt"):
    """Rows of a source whose kind the schema does not take are not counted in (`applies: false`)."""
    key = context.partition_key
    storage.write_rejects(context.asset_key, key, rejects_table(key, context.asset_key.to_user_string(), issues))
    acc = Accounting.from_issues(table.num_rows + len(issues), table.num_rows, issues)
    md = stage_metadata(table, acc, text_column=text_column,
                        preview_columns=[c for c in table.column_names if c not in ("metadata", "messages")][:6],
                        extra={"applies": applies, "kind": spec.kind,
                               "not_applicable_rows": 0 if applies else upstream_rows})
    yield dg.Output(table, metadata=md)
    yield accounting_check(acc)
    yield unique_check(table, "all_prompt_id")


def _checks(name: str) -> list:
    return [dg.AssetCheckSpec("row_accounting", asset=name, blocking=True),
            dg.AssetCheckSpec("all_prompt_id_unique", asset=name)]


def _records(context, registry: SourceRegistryResource, storage: StorageResource, prompts: pa.Table,
             kinds: tuple, build, schema: pa.Schema):
    """Build one record schema for this source, or an empty table when its kind does not apply."""
    spec = registry.get(context.partition_key)
    applies = spec.kind in kinds
    table, issues = build(prompts) if applies else (schema.empty_table(), [])
    yield from _emit(context, storage, spec, table, issues, applies, prompts.num_rows)


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("sft_records"),
          description="SFT schema: all_prompt_id, source_prompt_id, prompt, answer, metadata (+ messages).")
def sft_records(context: dg.AssetExecutionContext, config: SftConfig, registry: SourceRegistryResource,
                storage: StorageResource, deduplicated_prompts: pa.Table):
    yield from _records(context, registry, storage, deduplicated_prompts, SFT_KINDS,
                        lambda t: sft_from(t, config.best_reply_only), SFT_SCHEMA)


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("cot_records"),
          description="CoT schema: all_prompt_id, source_prompt_id, prompt, thinking, answer, metadata.")
def cot_records(context: dg.AssetExecutionContext, registry: SourceRegistryResource,
                storage: StorageResource, deduplicated_prompts: pa.Table):
    yield from _records(context, registry, storage, deduplicated_prompts, COT_KINDS, cot_from, COT_SCHEMA)


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("preference_records"),
          description="Preference schema: prompt, chosen, rejected, metadata; multi-turn prompts kept "
                      "as message lists; ties flagged.")
def preference_records(context: dg.AssetExecutionContext, config: PreferenceConfig,
                       registry: SourceRegistryResource, storage: StorageResource,
                       deduplicated_prompts: pa.Table):
    spec = registry.get(context.partition_key)
    applies = spec.kind == "preference" or (config.from_ranked_replies and spec.kind in SFT_KINDS)
    if applies:
        table, issues = preference_from(deduplicated_prompts, spec.kind)
    else:
        table, issues = PREFERENCE_SCHEMA.empty_table(), []  # not this schema's kind: takes no rows
    yield from _emit(context, storage, spec, table, issues, applies, deduplicated_prompts.num_rows)
