"""Records stage: the deduplicated prompts of each source -> the seed's three record schemas.

- `sft_records`  (kinds sft, attributes): prompt -> answer; OASST: the best-ranked reply per prompt.
- `cot_records`  (kind cot): prompt -> thinking + answer (GSM8K '####', <think>…</think>, \boxed{}).
- `preference_records` (kind preference; and ranked replies of any source): prompt, chosen, rejected.

A source whose kind a schema does not take gives an empty table (metadata `applies: false`)."""

import dagster as dg
import pyarrow as pa

from partitions import source_partitions
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common.accounting import Accounting, RowIssue, rejects_table
from ..common.metadata import accounting_check, all_rejected_metadata, stage_metadata, unique_check
from .unify import (COT_KINDS, COT_SCHEMA, PREFERENCE_SCHEMA, SFT_KINDS, SFT_SCHEMA, cot_from,
                    preference_from, sft_from)

GROUP = "records"


class SftConfig(dg.Config):
    best_reply_only: bool = True  # ranked replies (OASST): keep only the best-ranked one per prompt


class PreferenceConfig(dg.Config):
    from_ranked_replies: bool = True  # pair best vs worst ranked reply of sft/attributes sources


def _emit(context, storage: StorageResource, spec, table: pa.Table, issues: list[RowIssue],
          applies: bool, upstream_rows: int, text_column: str = "prompt"):
    """rows_in = the upstream rows as loaded (each ends as a record or an issue with its reason);
    rows of a source whose kind the schema does not take are not counted in (`applies: false`)."""
    key = context.partition_key
    storage.write_rejects(context.asset_key, key, rejects_table(key, context.asset_key.to_user_string(), issues))
    acc = Accounting.from_issues(upstream_rows if applies else 0, table.num_rows, issues)
    md = stage_metadata(table, acc, text_column=text_column,
                        preview_columns=[c for c in table.column_names if c not in ("metadata", "messages")][:6],
                        extra={"applies": applies, "kind": spec.kind,
                               "not_applicable_rows": 0 if applies else upstream_rows,
                               **all_rejected_metadata(context, key, acc, issues)})
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
