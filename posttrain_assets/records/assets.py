"""Records stage: the deduplicated prompts of each source -> the seed's three record schemas.

- `sft_records`  (kinds sft, attributes): prompt -> answer; OASST: the best-ranked reply per prompt.
- `cot_records`  (kind cot): prompt -> thinking + answer (GSM8K '####', <think>…</think>, \boxed{}).
- `preference_records` (kind preference; the pairs of a multi-trace CoT source; and ranked replies of
  any source): prompt, chosen, rejected, each side's whole conversation, ties flagged with their kind.

A source whose kind a schema does not take gives an empty table (metadata `applies: false`) without
reading its rows. Each asset streams: deduplicated_prompts is read batch by batch (a PartitionReader)
and the records are written as Parquet row groups."""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from partitions import source_partitions
from resources.sources import SourceRegistryResource
from resources.storage import PartitionReader, StorageResource, TableStream

from ..common.accounting import Accounting, RowIssue, rejects_table
from ..common.metadata import TableSummary, accounting_check, all_rejected_metadata, stage_metadata, unique_check
from .unify import (COT_KINDS, COT_SCHEMA, PAIR_ADAPTERS, PREFERENCE_SCHEMA, SFT_KINDS, SFT_SCHEMA, best_ranks,
                    cot_from, preference_from, sft_from)

GROUP = "records"


RECORD_BATCH_ROWS = 20_000


class SftConfig(dg.Config):
    best_reply_only: bool = True  # ranked replies (OASST): keep only the best-ranked one per prompt
    batch_rows: int = RECORD_BATCH_ROWS  # rows per batch read from deduplicated_prompts and written


class PreferenceConfig(dg.Config):
    from_ranked_replies: bool = True  # pair best vs worst ranked reply of sft/attributes sources
    batch_rows: int = RECORD_BATCH_ROWS


class CotConfig(dg.Config):
    batch_rows: int = RECORD_BATCH_ROWS  # rows per batch read from deduplicated_prompts and written


def _stream(context, storage: StorageResource, spec, prompts: PartitionReader, schema: pa.Schema, applies: bool,
            build_batches, text_column: str = "prompt", batch_rows: int = RECORD_BATCH_ROWS, more=dict):
    """Write one record schema batch by batch. `build_batches(issues)` yields the output tables,
    appending its issues. rows_in = the upstream rows as loaded (each ends as a record or an issue
    with its reason); rows of a source whose kind the schema does not take are not read nor counted
    in (`applies: false`)."""
    key = context.partition_key
    upstream_rows = prompts.num_rows
    issues: list[RowIssue] = []
    summary = TableSummary(schema, text_column=text_column, unique_column="all_prompt_id")
    done: dict = {}

    def batches():
        if applies:
            for table in build_batches(issues):
                yield from table.to_batches()

    def on_done(rows_written: int) -> dict:
        storage.write_rejects(context.asset_key, key, rejects_table(key, context.asset_key.to_user_string(), issues))
        acc = Accounting.from_issues(upstream_rows if applies else 0, rows_written, issues)
        done["acc"] = acc
        return stage_metadata(summary, acc, text_column=text_column,
                              preview_columns=[c for c in schema.names if c not in ("metadata", "messages")][:6],
                              extra={"applies": applies, "kind": spec.kind,
                                     "not_applicable_rows": 0 if applies else upstream_rows, **more(),
                                     **all_rejected_metadata(context, key, acc, issues)})

    yield dg.Output(TableStream(schema, summary.tap(batches()), on_done=on_done, row_group_rows=batch_rows))
    yield accounting_check(done["acc"])
    yield unique_check(summary, "all_prompt_id")


def _tables(prompts: PartitionReader, batch_rows: int, columns=None):
    for b in prompts.iter_batches(batch_rows, columns=columns):
        yield pa.Table.from_batches([b])


def _checks(name: str) -> list:
    return [dg.AssetCheckSpec("row_accounting", asset=name, blocking=True),
            dg.AssetCheckSpec("all_prompt_id_unique", asset=name)]


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("sft_records"),
          description="SFT schema: all_prompt_id, source_prompt_id, prompt, answer, metadata (+ messages).")
def sft_records(context: dg.AssetExecutionContext, config: SftConfig, registry: SourceRegistryResource,
                storage: StorageResource, deduplicated_prompts: PartitionReader):
    """Streams; the working set is the best rank per prompt text of the ranked replies (OASST)."""
    spec = registry.get(context.partition_key)
    n = config.batch_rows

    def build(issues):
        best = None
        if config.best_reply_only:  # a first pass over three columns: the best rank per prompt
            best = {}
            for t in _tables(deduplicated_prompts, n, ["prompt", "rank", "response"]):
                best_ranks(t, best)
        for t in _tables(deduplicated_prompts, n):
            table, iss = sft_from(t, config.best_reply_only, best)
            issues.extend(iss)
            yield table

    yield from _stream(context, storage, spec, deduplicated_prompts, SFT_SCHEMA, spec.kind in SFT_KINDS, build,
                       batch_rows=n)


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("cot_records"),
          description="CoT schema: all_prompt_id, source_prompt_id, prompt, thinking, answer, metadata.")
def cot_records(context: dg.AssetExecutionContext, config: CotConfig, registry: SourceRegistryResource,
                storage: StorageResource, deduplicated_prompts: PartitionReader):
    """Streams (row by row, nothing kept across batches)."""
    spec = registry.get(context.partition_key)

    def build(issues):
        for t in _tables(deduplicated_prompts, config.batch_rows):
            table, iss = cot_from(t, spec.answer_rule)
            issues.extend(iss)
            yield table

    yield from _stream(context, storage, spec, deduplicated_prompts, COT_SCHEMA, spec.kind in COT_KINDS, build,
                       batch_rows=config.batch_rows)


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=_checks("preference_records"),
          description="Preference schema: prompt, chosen, rejected, metadata; multi-turn prompts kept "
                      "as message lists; ties flagged.")
def preference_records(context: dg.AssetExecutionContext, config: PreferenceConfig,
                       registry: SourceRegistryResource, storage: StorageResource,
                       deduplicated_prompts: PartitionReader):
    """Streams a preference source row by row; pairing ranked replies (OASST) holds the rows that
    have a rank and a response until the end (a prompt's replies may be anywhere in the source)."""
    spec = registry.get(context.partition_key)
    pairs = spec.kind in COT_KINDS and spec.adapter in PAIR_ADAPTERS  # multi-trace: pairs beside the CoT rows
    applies = spec.kind == "preference" or pairs or (config.from_ranked_replies and spec.kind in SFT_KINDS)
    kind = "pairs" if pairs else spec.kind

    ties: Counter = Counter()  # tie kind -> rows (they stay, flagged; the export leaves them out by default)

    def build(issues):
        ranked = []

        def counted(table):
            ties.update(k for k in table["tie_kind"].to_pylist() if k is not None)
            return table
        for t in _tables(deduplicated_prompts, config.batch_rows):
            if kind not in ("preference", "pairs"):
                has = pc.and_(pc.is_valid(t["response"]), pc.is_valid(t["rank"]))
                ranked.append(t.filter(has))
                t = t.filter(pc.invert(has))  # -> no_ranked_reply issues, no rows
            table, iss = preference_from(t, kind)
            issues.extend(iss)
            yield counted(table)
        if ranked:
            table, iss = preference_from(pa.concat_tables(ranked), kind)
            issues.extend(iss)
            yield counted(table)

    yield from _stream(context, storage, spec, deduplicated_prompts, PREFERENCE_SCHEMA, applies, build,
                       batch_rows=config.batch_rows,
                       more=lambda: {"ties": sum(ties.values()), "ties_by_kind": dg.MetadataValue.json(dict(ties))})
