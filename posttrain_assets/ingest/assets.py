"""Ingest stage: `raw_records` (rows as loaded) -> `merged_prompts` (unified prompt schema)."""

from typing import Optional

import dagster as dg
import pyarrow as pa

from partitions import source_partitions
from partitions.registry import GENERATOR_ASSETS, RegistryError, SourceSpec
from partitions.shards import RowFingerprint, changed_under_shard
from resources.sources import SourceRegistryResource
from resources.storage import MissingPartitionError, StorageResource

from ..common.accounting import Accounting, RowIssue, rejects_table
from ..common.metadata import (accounting_check, all_rejected_metadata, report_issues, required_check,
                               stage_metadata, unique_check)
from .loaders import SourceLoadError, load_rows, rows_from_generator, rows_to_table
from .merging import FieldMappingError, language_counts, merge_prompts

GROUP = "ingest"
#: what raw_records / merged_prompts say for a `kind: synthetic` source: its rows are not loaded from
#: files but read from its generator's asset (magpie_instructions), which must be materialised first
SYNTHETIC_NOTE = "synthetic source: rows from magpie_instructions"


class RawRecordsConfig(dg.Config):
    limit: Optional[int] = None  # read at most this many rows per file, or of a shard (None: all; registry limit applies too)
    # a shard whose file changed under it (rows it read before differ) fails; True accepts the file as
    # it is now (the shard's downstream partitions must then be re-materialised too)
    accept_changed_file: bool = False


class MergedPromptsConfig(dg.Config):
    max_prompt_chars: int = 200_000  # longer prompts become `prompt_too_long` rejects
    dedup: bool = True  # drop exact duplicates within the source (normalised text, keep first)


def source_spec(registry: SourceRegistryResource, key: str) -> SourceSpec:
    try:
        return registry.get(key)
    except RegistryError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def previous_shard_reads(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> dict | None:
    """`shard_rows_read` and `shard_fingerprint` of the partition's latest materialisation, if any."""
    res = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]),
                                          limit=1)
    if not res.records:
        return None
    meta = res.records[0].asset_materialization.metadata
    return {k: meta[k].value for k in ("shard_rows_read", "shard_fingerprint") if k in meta}


def _save_rejects(context, storage: StorageResource, source: str, issues: list[RowIssue]) -> str:
    return storage.write_rejects(context.asset_key, context.partition_key,
                                 rejects_table(source, context.asset_key.to_user_string(), issues))


@dg.asset(
    partitions_def=source_partitions,
    group_name=GROUP,
    kinds={"parquet", "python"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="raw_records", blocking=True)],
    description="The source's rows as loaded (top-level fields as columns, nested ones as JSON "
                "text) plus source_file and source_row; a synthetic source's rows come from its generator's asset.",
    # lineage: a synthetic source's rows are its generator's partition (read only for such sources)
    deps=[dg.AssetDep(a) for a in sorted(set(GENERATOR_ASSETS.values()))],
)
def raw_records(context: dg.AssetExecutionContext, config: RawRecordsConfig,
                registry: SourceRegistryResource, storage: StorageResource):
    key = context.partition_key
    spec = source_spec(registry, key)
    if spec.synthetic:  # nothing to load from files: the generator's asset holds the rows
        generated = GENERATOR_ASSETS[spec.generator]
        store = storage.store()
        path = store.path(generated, key)
        try:
            table = store.read(path)
        except MissingPartitionError:
            raise dg.Failure(description=f"source {key!r} is synthetic: materialise {generated} for it first "
                                         f"(no partition at {store.uri(path)})", allow_retries=False) from None
        context.log.info(f"source {key!r}: {SYNTHETIC_NOTE}: {table.num_rows} rows")
        loaded = rows_from_generator(table, store.uri(path))
    else:
        # a shard compares what it reads with its last materialisation (not in a `limit` test run)
        before = (previous_shard_reads(context.instance, context.asset_key, key)
                  if spec.shard and not config.limit else None)
        fingerprint = RowFingerprint(prefix_at=int(before.get("shard_rows_read") or 0)) if before else None
        try:
            loaded = load_rows(spec, log=context.log.info, limit=config.limit,
                               **({"fingerprint": fingerprint} if spec.shard else {}))
        except SourceLoadError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        why = changed_under_shard(key, loaded.files, before, loaded.fingerprint) if spec.shard else None
        if why and not config.accept_changed_file:
            raise dg.Failure(description=f"source {spec.source_key!r}: {why}. Give the changed data a new "
                                         f"source key (or append rows only), or re-run with config "
                                         f"accept_changed_file: true and re-materialise the shard's downstream",
                             allow_retries=False)
        if why:
            context.log.warning(f"{why}; accepted (accept_changed_file)")
    table = rows_to_table(loaded)
    acc = Accounting.from_issues(loaded.rows_read, table.num_rows, loaded.issues)
    report_issues(context, key, loaded.issues)
    rejects_uri = _save_rejects(context, storage, key, loaded.issues)
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, preview_columns=table.column_names[:6],
        extra={"files": dg.MetadataValue.json(loaded.files), "blank_lines": loaded.blank_lines,
               "kind": spec.kind, "adapter": spec.adapter, "licence": spec.licence,
               **({"note": SYNTHETIC_NOTE} if spec.synthetic else {}),
               **(shard_metadata(spec, loaded) if spec.shard else {}),
               "rejects_path": dg.MetadataValue.path(rejects_uri),
               **all_rejected_metadata(context, key, acc, loaded.issues)}))
    yield accounting_check(acc)


def shard_metadata(spec: SourceSpec, loaded) -> dict:
    """What a shard read: its source, row range, and the fingerprint a later run compares with."""
    rng = spec.shard
    return {"source": rng.parent, "shard_index": rng.index, "shard_range": f"[{rng.start}, {rng.stop})",
            "shard_rows_read": loaded.fingerprint.rows, "shard_fingerprint": loaded.fingerprint.hexdigest()}


@dg.asset(
    partitions_def=source_partitions,
    group_name=GROUP,
    kinds={"parquet", "python"},
    check_specs=[
        dg.AssetCheckSpec("row_accounting", asset="merged_prompts", blocking=True),
        dg.AssetCheckSpec("all_prompt_id_unique", asset="merged_prompts"),
        dg.AssetCheckSpec("required_columns", asset="merged_prompts"),
    ],
    description="One unified prompt schema per source: all_prompt_id, source_prompt_id, prompt, "
                "messages, response / chosen / rejected, metadata (original row as JSON); exact "
                "duplicates within the source removed.",
)
def merged_prompts(context: dg.AssetExecutionContext, config: MergedPromptsConfig,
                   registry: SourceRegistryResource, storage: StorageResource,
                   raw_records: pa.Table):
    key = context.partition_key
    spec = source_spec(registry, key)
    try:
        result = merge_prompts(raw_records, spec, max_prompt_chars=config.max_prompt_chars,
                               dedup=config.dedup, log=context.log.info)
    except FieldMappingError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    table, acc = result.table, result.accounting
    acc.rows_out = table.num_rows  # counted from what is written, not from the merge's own tally
    report_issues(context, key, result.issues)
    rejects_uri = _save_rejects(context, storage, key, result.issues)
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, text_column="prompt",
        preview_columns=["all_prompt_id", "prompt", "response", "chosen", "reference_answer"],
        extra={"raw_rows": result.raw_rows, "kind": spec.kind,
               **({"note": SYNTHETIC_NOTE} if spec.synthetic else {}),
               "languages": dg.MetadataValue.json(language_counts(table)),
               "rejects_path": dg.MetadataValue.path(rejects_uri),
               **all_rejected_metadata(context, key, acc, result.issues)}))
    yield accounting_check(acc)
    yield unique_check(table, "all_prompt_id")
    yield required_check(table, ["all_prompt_id", "source_prompt_id", "prompt", "metadata"],
                         nonblank=["prompt"])
