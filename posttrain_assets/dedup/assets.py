"""Dedup stage: `prompt_embeddings` (per source) -> `dedup_clusters` + reports (global fan-in)
-> `deduplicated_prompts` (per source).

The dedup unit is a *prompt group*: the records of one source that share a normalised prompt
(several ranked OASST replies to one prompt stay together). Groups whose prompts are identical
after normalisation (exact) or whose embeddings have cosine similarity >= threshold (semantic) form
a cluster; the cluster keeps its representative group and removes the others.

Representative rule (deterministic): lowest registry `priority`, then the richer group (more of
response / chosen / rejected / reference_answer filled, then more records), then the smallest
all_prompt_id."""

from typing import Literal, Optional, Union

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from partitions import source_partitions
from resources.embeddings import EmbeddingClient, default_threshold
from resources.sources import SourceRegistryResource
from resources.storage import PartitionReader, StorageResource, TableStream, check_partition_key

from ..common.accounting import Accounting, rejects_table
from ..common.metadata import (TableSummary, accounting_check, markdown_preview, report_issues, stage_metadata,
                               unique_check)
from ..common.pools import GPU_POOL
from .duplicates import SURVIVOR_COLUMNS, SurvivorFilter, cluster_prompts, language_markdown, summary_markdown
from .embedding import embed_in_chunks, embedding_fingerprint, embedding_parts

GROUP = "dedup"
CHUNKS_DIR = "_chunks"


class PromptEmbeddingsConfig(dg.Config):
    chunk_rows: int = 2048  # rows per saved chunk (a killed run resumes from finished chunks)


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet", "pytorch"},
    description="all_prompt_id + float32 embedding of the prompt: [final user turn ; earlier turns] / "
                "sqrt(2) (length-sorted batches, chunked and resumable), whether the model can represent "
                "the prompt (`representable`), and the model. Model and dimension in metadata.",
    pool=GPU_POOL,
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="prompt_embeddings", blocking=True)],
)
def prompt_embeddings(context: dg.AssetExecutionContext, config: PromptEmbeddingsConfig,
                      embeddings: EmbeddingClient, storage: StorageResource,
                      merged_prompts: pa.Table) -> dg.Output:
    ids = merged_prompts["all_prompt_id"].to_pylist()
    parts = embedding_parts(merged_prompts)
    scripts = embeddings.model_scripts()
    options = (f"{embeddings.backend}|scripts={scripts and sorted(scripts)}|tok={embeddings.tokenizer}"
               f"|unknown<={embeddings.max_unknown_share}|lower_caps={embeddings.lower_all_caps}")
    fp = embedding_fingerprint(embeddings.model_name, embeddings.normalize, embeddings.max_seq_length, ids, parts,
                               options)
    store = storage.store()
    chunk_dir = f"{store.base}/{CHUNKS_DIR}/prompt_embeddings/source={check_partition_key(context.partition_key)}"
    run = embed_in_chunks(ids, parts, embeddings.encode, fingerprint=fp, chunk_rows=config.chunk_rows,
                          store=store, chunk_dir=chunk_dir, representable=embeddings.representable,
                          model=embeddings.model_name, dim=embeddings.dimension, log=context.log.info,
                          checkpoint=embeddings.checkpoint)
    store.delete_dir(chunk_dir)
    table = run.table
    unrepresentable = int(table.num_rows - pc.sum(table["representable"]).as_py()) if table.num_rows else 0
    acc = Accounting(rows_in=len(ids), rows_out=table.num_rows)
    extra = {"model": embeddings.model_name, "backend": embeddings.backend,
             "dim": table.schema.field("embedding").type.list_size, "normalized": embeddings.normalize,
             "unrepresentable": unrepresentable, "dedup_threshold_default": embeddings.dedup_threshold,
             "chunks_total": run.chunks_total, "chunks_resumed": run.chunks_resumed,
             "rows_encoded_now": run.encoded_rows,
             "rows_per_s": round(run.encoded_rows / max(run.seconds, 1e-9), 1)}
    yield dg.Output(table, metadata=stage_metadata(table, acc, preview_columns=["all_prompt_id", "representable"],
                                                   extra=extra))
    yield accounting_check(acc)


class FaissGraphDedup(dg.Config):
    """Cosine similarity >= threshold links two prompts (a faiss graph: exact all-pairs, IVF, or IVF over
    compressed codes by size)."""
    name: Literal["faiss_graph"] = "faiss_graph"
    # cosine similarity; None = the embedding model's calibrated default (resources.embeddings.default_threshold)
    threshold: Optional[float] = None
    exact_max_n: int = 100_000  # exact all-pairs up to here, IVF above
    # above this many vectors (0 = never) the IVF join runs on compressed codes (PCA projection +
    # residual norm, an upper bound of the cosine) and every candidate pair is re-ranked on the exact
    # vectors (no false links; 516 bytes a vector instead of 2 KB)
    ivfpca_min_n: int = 1_000_000
    ivfpca_dims: int = 128  # ivfpca: principal directions in the codes (+ 1 residual norm)
    search: Literal["", "exact", "ivf", "ivfpca"] = ""  # "" = by size (above); or force one
    nlist: int = 0  # IVF cells (0 = ~sqrt(n))
    nprobe: int = 3  # IVF cells probed per vector
    max_neighbors: int = 0  # keep at most this many links per vector (0 = all)


class DbscanDedup(dg.Config):
    """DBSCAN over the embeddings (eps = 1 - threshold)."""
    name: Literal["dbscan"] = "dbscan"
    threshold: Optional[float] = None  # cosine similarity; None = the embedding model's calibrated default


class MinhashDedup(dg.Config):
    """MinHash LSH over word n-grams (no embeddings)."""
    name: Literal["minhash"] = "minhash"
    jaccard_threshold: float = 0.8  # Jaccard similarity over word n-grams
    ngram: int = 3
    num_perm: int = 128


#: the dedup methods, one config each (the launchpad shows the chosen one's fields)
DedupMethod = Union[FaissGraphDedup, DbscanDedup, MinhashDedup]


class DedupConfig(dg.Config):
    method: DedupMethod = Field(default=FaissGraphDedup(), discriminator="name")
    cross_language: bool = False  # False: never merge semantically records whose `language` differs
    scope: Literal["global", "kind"] = "global"  # kind: only compare prompts of the same registry kind
    top_n: int = 500  # clusters in the report
    seed: int = 0


@dg.multi_asset(
    outs={
        "dedup_clusters": dg.AssetOut(description="Per record: cluster id, representative, "
                                      "similarity to it, match (unique/representative/exact/semantic), keep."),
        "dedup_cluster_report": dg.AssetOut(description="The top-N largest clusters with example members."),
        "dedup_summary": dg.AssetOut(description="Per source: before, after, removed within source, "
                                     "removed as duplicate of another source (metadata: also per language)."),
    },
    ins={"merged_prompts": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
         "prompt_embeddings": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    group_name=GROUP, can_subset=False,
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="dedup_clusters", blocking=True)],
)
def dedup_clusters(context: dg.AssetExecutionContext, config: DedupConfig,
                   registry: SourceRegistryResource, merged_prompts: pa.Table, prompt_embeddings: pa.Table):
    reg = registry.load()
    try:  # every source of the fan-in, also those with no rows
        sources = list(context.asset_partition_keys_for_input("merged_prompts"))
    except Exception:  # noqa: BLE001 - unpartitioned use: the sources present in the data
        sources = None
    # per partition key (a shard key takes its source's priority and kind)
    specs = reg.specs_for(set(merged_prompts["source"].unique().to_pylist()) | set(sources or ()))
    priorities = {k: s.priority for k, s in specs.items()}
    kinds = {k: s.kind for k, s in specs.items()}
    res = cluster_prompts(merged_prompts, prompt_embeddings, priorities, kinds, config, log=context.log.info,
                          sources=sources, model_threshold=default_threshold)
    c = res.clusters
    kept = int(pc.sum(c["keep"]).as_py() or 0) if c.num_rows else 0
    # rows_in = every source's merged prompts as loaded; out = rows labelled keep; removed by the
    # table's own reasons: a record the clustering loses makes the check fail
    acc = Accounting(rows_in=merged_prompts.num_rows, rows_out=kept)
    acc.removed_by_reason.update(r for k, r in zip(c["keep"].to_pylist(), c["removed_reason"].to_pylist()) if not k)
    md_summary = summary_markdown(res.summary, res.by_language)
    context.log.info("dedup summary:\n" + md_summary)
    yield dg.Output(c, output_name="dedup_clusters", metadata=stage_metadata(
        c, acc, preview_columns=["all_prompt_id", "cluster_id", "representative_id", "similarity", "match"],
        extra={**{k: (dg.MetadataValue.json(v) if isinstance(v, dict) else v) for k, v in res.stats.items()},
               "summary": dg.MetadataValue.md(md_summary),
               "by_language": dg.MetadataValue.md(language_markdown(res.by_language)),
               "sources": dg.MetadataValue.json(sorted(set(c["source"].to_pylist())))}))
    yield dg.Output(res.report, output_name="dedup_cluster_report", metadata={
        "dagster/row_count": res.report.num_rows,
        "top_clusters": dg.MetadataValue.md(markdown_preview(
            res.report, n=20, columns=["cluster_id", "size", "sources", "min_similarity", "representative_prompt"]))})
    yield dg.Output(res.summary, output_name="dedup_summary", metadata={
        "dagster/row_count": res.summary.num_rows, "summary": dg.MetadataValue.md(md_summary),
        "by_language": dg.MetadataValue.md(language_markdown(res.by_language)),
        "threshold": res.stats["threshold"], "unrepresentable": res.stats["unrepresentable"]})
    yield accounting_check(acc, asset_key="dedup_clusters")


class DeduplicatedPromptsConfig(dg.Config):
    batch_rows: int = 20_000  # rows per batch read from merged_prompts and written


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    ins={"merged_prompts": dg.AssetIn(), "dedup_clusters": dg.AssetIn()},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="deduplicated_prompts", blocking=True),
                 dg.AssetCheckSpec("all_prompt_id_unique", asset="deduplicated_prompts")],
    description="The source's merged prompts that survive the global dedup.",
)
def deduplicated_prompts(context: dg.AssetExecutionContext, config: DeduplicatedPromptsConfig,
                         storage: StorageResource, merged_prompts: PartitionReader,
                         dedup_clusters: PartitionReader):
    """Streams: merged_prompts passes through batch by batch; memory holds this source's rows of
    dedup_clusters (6 Arrow columns, read with a filter on `source`) and the removed rows' issues."""
    key = context.partition_key
    mine = dedup_clusters.read(columns=["source", *SURVIVOR_COLUMNS], filters=[("source", "=", key)])
    survivors = SurvivorFilter(mine, key)
    try:
        survivors.check(merged_prompts.iter_batches(config.batch_rows, columns=["all_prompt_id"]))
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    summary = TableSummary(merged_prompts.schema, text_column="prompt", unique_column="all_prompt_id")
    done: dict = {}

    def on_done(rows_written: int) -> dict:
        acc = survivors.accounting(rows_written)
        report_issues(context, key, survivors.issues)
        storage.write_rejects(context.asset_key, key, rejects_table(key, "deduplicated_prompts", survivors.issues))
        done["acc"] = acc
        return stage_metadata(summary, acc, text_column="prompt",
                              preview_columns=["all_prompt_id", "prompt", "response"])

    yield dg.Output(TableStream(merged_prompts.schema, summary.tap(survivors.batches(
        merged_prompts.iter_batches(config.batch_rows))), on_done=on_done, row_group_rows=config.batch_rows))
    yield accounting_check(done["acc"])
    yield unique_check(summary, "all_prompt_id")
