"""Ingest stage: `raw_records` (rows as loaded) -> `merged_prompts` (unified prompt schema)."""

import os
from pathlib import Path
import shutil
import tempfile
from typing import Optional

import dagster as dg

from partitions import source_partitions
from partitions.registry import GENERATOR_ASSETS, RegistryError, SourceSpec
from partitions.shards import RowFingerprint, changed_under_shard
from resources.sources import SourceRegistryResource
from resources.storage import MissingPartitionError, PartitionReader, StorageResource, TableStream

from ..common.accounting import Accounting, RowIssue, rejects_table
from ..common.metadata import (TableSummary, accounting_check, all_rejected_metadata, report_issues,
                               required_check, stage_metadata, unique_check)
from .loaders import MAX_ROW_BYTES, RAW_BATCH_ROWS, LoadedRows, SourceLoadError, iter_rows, rows_from_generator, stream_raw_table
from .merging import MERGE_BATCH_ROWS, MERGED_SCHEMA, FieldMappingError, merge_prompt_batches

GROUP = "ingest"
#: what raw_records / merged_prompts say for a `kind: synthetic` source: its rows are not loaded from
#: files but read from its generator's asset (magpie_instructions), which must be materialised first
SYNTHETIC_NOTE = "synthetic source: rows from magpie_instructions"
#: where raw_records spills its Arrow batches while the column types are not known yet (default: the
#: system temp dir); needs about the source's size in free local disk
SPILL_DIR_ENV = "POSTTRAIN_SPILL_DIR"


class RawRecordsConfig(dg.Config):
    limit: Optional[int] = None  # read at most this many rows per file, or of a shard (None: all; registry limit applies too)
    # a shard whose file changed under it (rows it read before differ) fails; True accepts the file as
    # it is now (the shard's downstream partitions must then be re-materialised too)
    accept_changed_file: bool = False
    batch_rows: int = RAW_BATCH_ROWS  # rows per Arrow batch (memory holds one batch, not the source)
    max_row_bytes: int = MAX_ROW_BYTES  # a longer JSON Lines row is a `row_too_large` reject, never parsed


class MergedPromptsConfig(dg.Config):
    max_prompt_chars: int = 200_000  # longer prompts become `prompt_too_long` rejects
    dedup: bool = True  # drop exact duplicates within the source (normalised text, keep first)
    batch_rows: int = MERGE_BATCH_ROWS  # rows per batch read from raw_records and written


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
    """Streams: rows are read one at a time, converted to Arrow every `batch_rows` rows and spilled
    to local disk (the column types are known only after the last row), then written as Parquet row
    groups in the unified schema; memory holds one batch, the issues and the column types."""
    key = context.partition_key
    spec = source_spec(registry, key)
    loaded = LoadedRows(max_row_bytes=config.max_row_bytes)
    if spec.synthetic:  # nothing to load from files: the generator's asset holds the rows
        generated = GENERATOR_ASSETS[spec.generator]
        store = storage.store()
        path = store.path(generated, key)
        try:
            table = store.read(path)  # an LLM-made table: small next to a loaded source
        except MissingPartitionError:
            raise dg.Failure(description=f"source {key!r} is synthetic: materialise {generated} for it first "
                                         f"(no partition at {store.uri(path)})", allow_retries=False) from None
        context.log.info(f"source {key!r}: {SYNTHETIC_NOTE}: {table.num_rows} rows")
        loaded = rows_from_generator(table, store.uri(path))
        rows = zip(loaded.source_files, loaded.source_rows, loaded.rows)
    else:
        # a shard compares what it reads with its last materialisation (not in a `limit` test run)
        before = (previous_shard_reads(context.instance, context.asset_key, key)
                  if spec.shard and not config.limit else None)
        fingerprint = RowFingerprint(prefix_at=int(before.get("shard_rows_read") or 0)) if before else None
        rows = iter_rows(spec, loaded, log=context.log.info, limit=config.limit,
                         **({"fingerprint": fingerprint} if spec.shard else {}))
    spill = tempfile.mkdtemp(prefix=f"raw_records-{key}-", dir=os.environ.get(SPILL_DIR_ENV) or None)
    try:
        try:
            raw = stream_raw_table(rows, spill, config.batch_rows)  # every row read (and spilled) here
        except SourceLoadError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        # a shard's file changed under it: fail before anything is written
        why = changed_under_shard(key, loaded.files, before, loaded.fingerprint) if spec.shard else None
        if why and not config.accept_changed_file:
            raise dg.Failure(description=f"source {spec.source_key!r}: {why}. Give the changed data a new "
                                         f"source key (or append rows only), or re-run with config "
                                         f"accept_changed_file: true and re-materialise the shard's downstream",
                             allow_retries=False)
        if why:
            context.log.warning(f"{why}; accepted (accept_changed_file)")
        summary = TableSummary(raw.schema)
        done: dict = {}

        def on_done(rows_written: int) -> dict:
            acc = Accounting.from_issues(loaded.rows_read, rows_written, loaded.issues)
            report_issues(context, key, loaded.issues)
            rejects_uri = _save_rejects(context, storage, key, loaded.issues)
            done["acc"] = acc
            return stage_metadata(
                summary, acc, preview_columns=raw.schema.names[:6],
                # files by their name under the glob's root: an expanded $VAR never reaches the metadata
                extra={"files": dg.MetadataValue.json([loaded.names.get(Path(f), f) for f in loaded.files]),
                       "blank_lines": loaded.blank_lines,
                       "kind": spec.kind, "adapter": spec.adapter, "licence": spec.licence,
                       **({"note": SYNTHETIC_NOTE} if spec.synthetic else {}),
                       **(shard_metadata(spec, loaded) if spec.shard else {}),
                       "rejects_path": dg.MetadataValue.path(rejects_uri),
                       **all_rejected_metadata(context, key, acc, loaded.issues)})

        yield dg.Output(TableStream(raw.schema, summary.tap(raw.batches()), on_done=on_done,
                                     row_group_rows=config.batch_rows))
        yield accounting_check(done["acc"])
    finally:
        shutil.rmtree(spill, ignore_errors=True)


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
                   raw_records: PartitionReader):
    """Streams: raw_records is read batch by batch and merged batch by batch into Parquet row
    groups; memory holds one batch, the dedup digests (16 bytes per kept row + its id) and the
    issues. (An OASST message-tree source still builds all its trees at once.)"""
    key = context.partition_key
    spec = source_spec(registry, key)
    try:
        merger, batches = merge_prompt_batches(raw_records, spec, max_prompt_chars=config.max_prompt_chars,
                                               dedup=config.dedup, log=context.log.info,
                                               read_batch_rows=config.batch_rows, batch_rows=config.batch_rows)
    except FieldMappingError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    summary = TableSummary(MERGED_SCHEMA, text_column="prompt", count_column="language",
                           unique_column="all_prompt_id",
                           required=["all_prompt_id", "source_prompt_id", "prompt", "metadata"],
                           nonblank=["prompt"])
    done: dict = {}

    def on_done(rows_written: int) -> dict:
        acc = merger.accounting(rows_written)  # rows_out counted from what is written
        report_issues(context, key, merger.issues)
        rejects_uri = _save_rejects(context, storage, key, merger.issues)
        done["acc"] = acc
        return stage_metadata(
            summary, acc, text_column="prompt",
            preview_columns=["all_prompt_id", "prompt", "response", "chosen", "reference_answer"],
            extra={"raw_rows": merger.raw_rows, "kind": spec.kind,
                   **({"note": SYNTHETIC_NOTE} if spec.synthetic else {}),
                   "languages": dg.MetadataValue.json(summary.value_counts()),
                   "rejects_path": dg.MetadataValue.path(rejects_uri),
                   **all_rejected_metadata(context, key, acc, merger.issues)})

    yield dg.Output(TableStream(MERGED_SCHEMA, summary.tap(batches), on_done=on_done,
                                 row_group_rows=config.batch_rows))
    yield accounting_check(done["acc"])
    yield unique_check(summary, "all_prompt_id")
    yield required_check(summary, ["all_prompt_id", "source_prompt_id", "prompt", "metadata"],
                         nonblank=["prompt"])
