"""Dedup stage: `prompt_embeddings` (per source) -> `dedup_clusters` + reports (global fan-in)
-> `deduplicated_prompts` (per source).

The dedup unit is a *prompt group*: the records of one source that share a normalised prompt
(several ranked OASST replies to one prompt stay together). Groups whose prompts are identical
after normalisation (exact) or whose embeddings have cosine similarity >= threshold (semantic) form
a cluster; the cluster keeps its representative group and removes the others.

Representative rule (deterministic): lowest registry `priority`, then the richer group (more of
response / chosen / rejected / reference_answer filled, then more records), then the smallest
all_prompt_id.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partitions import source_partitions
from resources.embeddings import EmbeddingClient
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from .accounting import Accounting, RowIssue, rejects_table
from .clustering import components, dbscan_labels, faiss_graph, minhash_labels
from .ingest import report_issues
from .metadata import accounting_check, markdown_preview, stage_metadata, unique_check

GROUP = "dedup"
CHUNKS_DIR = "_chunks"

# ------------------------------------------------------------------------------ embeddings


def embeddings_table(ids: list[str], vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
    return pa.table({"all_prompt_id": pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})


def vectors_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    col = table[column].combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    dim = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), dim).astype(np.float32, copy=False)


@dataclass
class EmbedRun:
    table: pa.Table
    chunks_total: int
    chunks_resumed: int
    encoded_rows: int
    seconds: float


def embed_in_chunks(ids: list[str], parts: list[tuple[str, str]], encode: Callable[[list[str]], np.ndarray],
                    *, fingerprint: str, chunk_rows: int, store, chunk_dir: str,
                    log: Optional[Callable[[str], None]] = None) -> EmbedRun:
    """Embed length-sorted chunks, each saved atomically as it finishes; finished chunks of an
    interrupted run with the same fingerprint are reused. Returns vectors in input order."""
    t0 = time.monotonic()
    order = sorted(range(len(parts)), key=lambda i: (len(parts[i][0]) + len(parts[i][1]), i))
    n_chunks = (len(order) + chunk_rows - 1) // chunk_rows
    base = f"{chunk_dir}/{fingerprint}"
    pieces: list[pa.Table] = []
    resumed = encoded = 0
    for c in range(n_chunks):
        idx = order[c * chunk_rows:(c + 1) * chunk_rows]
        path = f"{base}/chunk-{c:05d}.parquet"
        if store.exists(path):
            part = store.read(path)
            if part["all_prompt_id"].to_pylist() == [ids[i] for i in idx]:
                pieces.append(part)
                resumed += 1
                continue
        vecs = conversation_vectors([parts[i] for i in idx], encode)
        part = embeddings_table([ids[i] for i in idx], vecs)
        store.write(part, path)
        pieces.append(part)
        encoded += len(idx)
        if log:
            done = min((c + 1) * chunk_rows, len(order))
            rate = encoded / max(time.monotonic() - t0, 1e-9)
            log(f"embedded {done:,}/{len(order):,} rows (chunk {c + 1}/{n_chunks}, {rate:,.0f} rows/s)")
    if pieces:
        table = pa.concat_tables(pieces)
        position = {pid: i for i, pid in enumerate(table["all_prompt_id"].to_pylist())}
        table = table.take(pa.array([position[x] for x in ids], pa.int64()))
    else:
        table = embeddings_table([], np.zeros((0, 0), np.float32))
    return EmbedRun(table, n_chunks, resumed, encoded, time.monotonic() - t0)


def embedding_parts(table: pa.Table) -> list[tuple[str, str]]:
    """(final user turn, earlier turns) per prompt; the earlier part is "" for single-turn prompts."""
    out = []
    for prompt, msgs in zip(table["prompt"].to_pylist(), table["messages"].to_pylist()):
        users = [i for i, m in enumerate(msgs or []) if m["role"] == "user"]
        if not msgs or len(msgs) < 2 or not users:
            out.append((prompt, ""))
            continue
        last = users[-1]
        earlier = "\n\n".join(f"{m['role']}: {m['content']}" for i, m in enumerate(msgs) if i != last)
        out.append((msgs[last]["content"], earlier))
    return out


def conversation_vectors(parts: list[tuple[str, str]], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """[final turn ; earlier turns] / sqrt(2) from two unit vectors, so that the cosine of two prompts
    is the mean of their final-turn and context similarities. A single-turn prompt uses its text for
    both halves (its cosine with another single-turn prompt is the plain text cosine). Conversations
    that share a long history but end in different questions therefore stay apart, which they do
    not when the whole rendered conversation is embedded (mean pooling drowns the last turn)."""
    finals = encode([f for f, _ in parts])
    multi = [i for i, (_, c) in enumerate(parts) if c]
    context = finals.copy()
    if multi:
        context[multi] = encode([parts[i][1] for i in multi])
    return np.hstack([finals, context]).astype(np.float32) / np.float32(np.sqrt(2.0))


def embedding_fingerprint(model: str, normalize: bool, max_seq_length, ids: list[str],
                          parts: list[tuple[str, str]]) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{model}|{normalize}|{max_seq_length}|conversation-v1".encode())
    for i, (f, c) in zip(ids, parts):
        h.update(i.encode() + b"\x00" + hashlib.blake2b(f"{f}\x1f{c}".encode(), digest_size=8).digest())
    return h.hexdigest()


class PromptEmbeddingsConfig(dg.Config):
    chunk_rows: int = 2048  # rows per saved chunk (a killed run resumes from finished chunks)


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet", "pytorch"},
    description="all_prompt_id + float32 embedding of the prompt: [final user turn ; earlier turns] / "
                "sqrt(2) (length-sorted batches, chunked and resumable). Model and dimension in metadata.",
    op_tags={"dagster-k8s/config": {"container_config": {"resources": {
        "limits": {"nvidia.com/gpu": "1"}}}}},
)
def prompt_embeddings(context: dg.AssetExecutionContext, config: PromptEmbeddingsConfig,
                      embeddings: EmbeddingClient, storage: StorageResource,
                      merged_prompts: pa.Table) -> dg.Output:
    ids = merged_prompts["all_prompt_id"].to_pylist()
    parts = embedding_parts(merged_prompts)
    fp = embedding_fingerprint(embeddings.model_name, embeddings.normalize, embeddings.max_seq_length, ids, parts)
    store = storage.store()
    chunk_dir = f"{store.base}/{CHUNKS_DIR}/prompt_embeddings/source={context.partition_key}"
    run = embed_in_chunks(ids, parts, embeddings.encode, fingerprint=fp, chunk_rows=config.chunk_rows,
                          store=store, chunk_dir=chunk_dir, log=context.log.info)
    store.delete_dir(chunk_dir)
    table = run.table
    dim = table.schema.field("embedding").type.list_size if table.num_rows else 0
    acc = Accounting(rows_in=len(ids), rows_out=table.num_rows)
    yield dg.Output(table, metadata=stage_metadata(table, acc, preview_columns=["all_prompt_id"], extra={
        "model": embeddings.model_name, "backend": embeddings.backend, "dim": dim,
        "normalized": embeddings.normalize, "chunks_total": run.chunks_total,
        "chunks_resumed": run.chunks_resumed, "rows_encoded_now": run.encoded_rows,
        "rows_per_s": round(run.encoded_rows / max(run.seconds, 1e-9), 1)}))


# ------------------------------------------------------------------------------ clustering

CLUSTERS_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("cluster_id", pa.int64()),
    ("representative_id", pa.string()), ("representative_source", pa.string()),
    ("similarity", pa.float32()), ("match", pa.string()), ("cluster_size", pa.int64()),
    ("keep", pa.bool_()), ("removed_reason", pa.string()),
])


class DedupConfig(dg.Config):
    method: str = "faiss_graph"  # faiss_graph | dbscan | minhash
    threshold: float = 0.9  # cosine similarity (faiss_graph, dbscan: eps = 1 - threshold)
    scope: str = "global"  # global | kind (only compare prompts of the same registry kind)
    exact_max_n: int = 100_000  # faiss_graph: exact all-pairs up to here, IVF above
    nlist: int = 0  # IVF cells (0 = ~sqrt(n))
    nprobe: int = 3  # IVF cells probed per vector
    max_neighbors: int = 0  # keep at most this many links per vector (0 = all)
    minhash_threshold: float = 0.8  # Jaccard over word n-grams (minhash)
    minhash_ngram: int = 3
    minhash_num_perm: int = 128
    top_n: int = 500  # clusters in the report
    seed: int = 0


@dataclass
class DedupResult:
    clusters: pa.Table
    report: pa.Table
    summary: pa.Table
    stats: dict = field(default_factory=dict)


def _richness(t: pa.Table) -> np.ndarray:
    score = np.zeros(t.num_rows, np.int64)
    for col in ("response", "chosen", "rejected", "reference_answer"):
        if col in t.column_names:
            filled = pc.fill_null(pc.greater(pc.utf8_length(t[col]), 0), False)
            score += np.asarray(filled, dtype=np.int64)
    return score


def cluster_prompts(merged: pa.Table, embeddings: pa.Table, priorities: dict[str, int],
                    kinds: dict[str, str], cfg: DedupConfig,
                    log: Optional[Callable[[str], None]] = None) -> DedupResult:
    """Pure: every source's merged prompts + embeddings -> per-record clusters, report, summary."""
    t0 = time.monotonic()
    n = merged.num_rows
    ids = merged["all_prompt_id"].to_pylist()
    sources = merged["source"].to_pylist()
    hashes = merged["prompt_norm_hash"].to_pylist()
    pos = {pid: i for i, pid in enumerate(embeddings["all_prompt_id"].to_pylist())}
    missing = [pid for pid in ids if pid not in pos]
    if missing:
        raise ValueError(f"{len(missing)} merged prompts have no embedding (e.g. {missing[0]!r}); "
                         "re-materialise prompt_embeddings for their sources")
    X = vectors_of(embeddings)[np.fromiter((pos[p] for p in ids), np.int64, n)] if n else np.zeros((0, 0), np.float32)

    # prompt groups: (source, normalised prompt)
    group_of: dict[tuple, int] = {}
    g_idx = np.empty(n, np.int64)
    for i, key in enumerate(zip(sources, hashes)):
        g_idx[i] = group_of.setdefault(key, len(group_of))
    n_groups = len(group_of)
    rich = _richness(merged)
    prio = np.array([priorities.get(s, 100) for s in sources], np.int64)
    # rank order: the first record of a cluster in this order is its representative
    order = sorted(range(n), key=lambda i: (prio[i], -rich[i], ids[i]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    g_lead = np.full(n_groups, -1, np.int64)  # best-ranked record of each group
    for i in order:
        if g_lead[g_idx[i]] < 0:
            g_lead[g_idx[i]] = i
    g_hash = [hashes[i] for i in g_lead]
    g_kind = [kinds.get(sources[i], "") for i in g_lead]

    # exact: groups with the same normalised prompt (across sources)
    scope_key = (lambda g: (g_kind[g], g_hash[g])) if cfg.scope == "kind" else (lambda g: g_hash[g])
    first_with: dict = {}
    ex_src, ex_dst = [], []
    for g in range(n_groups):
        f = first_with.setdefault(scope_key(g), g)
        if f != g:
            ex_src.append(g)
            ex_dst.append(f)
    # semantic: one vector per distinct normalised prompt
    uniq = np.array(sorted(set(first_with.values())), np.int64)
    sem_src, sem_dst = [], []
    stats: dict = {"records": n, "prompt_groups": n_groups, "distinct_prompts": len(uniq),
                   "method": cfg.method, "threshold": cfg.threshold}
    buckets = ([uniq] if cfg.scope != "kind" else
               [uniq[[g_kind[g] == k for g in uniq]] for k in sorted(set(g_kind))])
    for bucket in buckets:
        if len(bucket) < 2:
            continue
        if cfg.method == "faiss_graph":
            lab, gs = faiss_graph(X[g_lead[bucket]], cfg.threshold, exact_max_n=cfg.exact_max_n,
                                  nlist=cfg.nlist, nprobe=cfg.nprobe, seed=cfg.seed,
                                  max_neighbors=cfg.max_neighbors, log=log)
            stats.update(search=gs.method, nlist=gs.nlist, nprobe=gs.nprobe,
                         edges=stats.get("edges", 0) + gs.edges)
        elif cfg.method == "dbscan":
            lab = dbscan_labels(X[g_lead[bucket]], cfg.threshold)
        elif cfg.method == "minhash":
            texts = merged["prompt"].take(pa.array(g_lead[bucket])).to_pylist()
            lab = minhash_labels(texts, cfg.minhash_threshold, cfg.minhash_num_perm, cfg.minhash_ngram,
                                 seed=cfg.seed + 1)
        else:
            raise ValueError(f"dedup method must be faiss_graph, dbscan or minhash, got {cfg.method!r}")
        sem_src.extend(bucket.tolist())
        sem_dst.extend(bucket[lab].tolist())
    g_label = components(n_groups, np.asarray(ex_src + sem_src, np.int64), np.asarray(ex_dst + sem_dst, np.int64))

    # representative group per cluster = the group holding the best-ranked record
    rep_group: dict[int, int] = {}
    for g in sorted(range(n_groups), key=lambda g: rank[g_lead[g]]):
        rep_group.setdefault(int(g_label[g]), g)
    cluster_sizes = np.bincount(g_label, minlength=n_groups)
    rep_of_group = np.array([rep_group[int(g_label[g])] for g in range(n_groups)], np.int64)
    # dense cluster ids in representative order
    cid_of_rep = {g: k for k, g in enumerate(sorted(set(rep_of_group.tolist()), key=lambda g: rank[g_lead[g]]))}

    rep_rec = g_lead[rep_of_group[g_idx]]  # representative record per record
    sim = np.einsum("ij,ij->i", X, X[rep_rec]).astype(np.float32) if n else np.zeros(0, np.float32)
    keep = rep_of_group[g_idx] == g_idx
    same_hash = np.array([g_hash[rep_of_group[g]] == g_hash[g] for g in g_idx.tolist()], bool) if n else np.zeros(0, bool)
    match, reason = [], []
    for i in range(n):
        g = g_idx[i]
        if cluster_sizes[g_label[g]] == 1:
            match.append("unique")
        elif keep[i]:
            match.append("representative")
        else:
            match.append("exact" if same_hash[i] else "semantic")
        if keep[i]:
            reason.append(None)
        else:
            reason.append("duplicate_within_source" if sources[rep_rec[i]] == sources[i]
                          else "duplicate_of_other_source")
    clusters = pa.Table.from_pydict({
        "all_prompt_id": ids, "source": sources,
        "cluster_id": [cid_of_rep[int(rep_of_group[g])] for g in g_idx.tolist()],
        "representative_id": [ids[r] for r in rep_rec.tolist()],
        "representative_source": [sources[r] for r in rep_rec.tolist()],
        "similarity": sim, "match": match,
        "cluster_size": cluster_sizes[g_label[g_idx]].astype(np.int64) if n else [],
        "keep": keep, "removed_reason": reason,
    }, schema=CLUSTERS_SCHEMA)
    stats["clusters_multi"] = int((cluster_sizes > 1).sum())
    stats["seconds"] = round(time.monotonic() - t0, 3)
    return DedupResult(clusters, cluster_report(clusters, merged, cfg.top_n), dedup_summary(clusters), stats)


REPORT_SCHEMA = pa.schema([
    ("cluster_id", pa.int64()), ("size", pa.int64()), ("records", pa.int64()),
    ("representative_id", pa.string()), ("representative_prompt", pa.string()),
    ("sources", pa.list_(pa.string())), ("min_similarity", pa.float32()),
    ("example_ids", pa.list_(pa.string())), ("example_prompts", pa.list_(pa.string())),
])


def cluster_report(clusters: pa.Table, merged: pa.Table, top_n: int, examples: int = 5) -> pa.Table:
    """The top-N largest clusters (size = prompt groups) with example members."""
    multi = clusters.filter(pc.greater(clusters["cluster_size"], 1))
    if multi.num_rows == 0:
        return REPORT_SCHEMA.empty_table()
    prompt_of = dict(zip(merged["all_prompt_id"].to_pylist(), merged["prompt"].to_pylist()))
    rows: dict[int, dict] = {}
    for r in multi.to_pylist():
        c = rows.setdefault(r["cluster_id"], {"cluster_id": r["cluster_id"], "size": r["cluster_size"],
                                              "records": 0, "representative_id": r["representative_id"],
                                              "sources": set(), "min_similarity": 1.0, "ex": []})
        c["records"] += 1
        c["sources"].add(r["source"])
        c["min_similarity"] = min(c["min_similarity"], r["similarity"])
        if r["all_prompt_id"] != r["representative_id"] and len(c["ex"]) < examples:
            c["ex"].append(r["all_prompt_id"])
    top = sorted(rows.values(), key=lambda c: (-c["size"], -c["records"], c["cluster_id"]))[:top_n]
    cut = lambda s, k: s if len(s) <= k else s[:k - 1] + "…"  # noqa: E731
    return pa.Table.from_pylist([{
        "cluster_id": c["cluster_id"], "size": c["size"], "records": c["records"],
        "representative_id": c["representative_id"],
        "representative_prompt": cut(prompt_of[c["representative_id"]], 300),
        "sources": sorted(c["sources"]), "min_similarity": c["min_similarity"],
        "example_ids": c["ex"], "example_prompts": [cut(prompt_of[x], 200) for x in c["ex"]],
    } for c in top], schema=REPORT_SCHEMA)


SUMMARY_SCHEMA = pa.schema([
    ("source", pa.string()), ("before", pa.int64()), ("after", pa.int64()),
    ("removed_within_source", pa.int64()), ("removed_other_source", pa.int64()),
    ("removed_exact", pa.int64()), ("removed_semantic", pa.int64()),
])


def dedup_summary(clusters: pa.Table) -> pa.Table:
    """Per source: before, after, removed within the source, removed as a duplicate of another."""
    out = {}
    for s, keep, reason, match in zip(*(clusters[c].to_pylist() for c in ("source", "keep", "removed_reason", "match"))):
        r = out.setdefault(s, {"source": s, "before": 0, "after": 0, "removed_within_source": 0,
                               "removed_other_source": 0, "removed_exact": 0, "removed_semantic": 0})
        r["before"] += 1
        if keep:
            r["after"] += 1
        else:
            r["removed_within_source" if reason == "duplicate_within_source" else "removed_other_source"] += 1
            r["removed_exact" if match == "exact" else "removed_semantic"] += 1
    return pa.Table.from_pylist(sorted(out.values(), key=lambda r: r["source"]), schema=SUMMARY_SCHEMA)


def summary_markdown(summary: pa.Table) -> str:
    return markdown_preview(summary, n=summary.num_rows or 1)


@dg.multi_asset(
    outs={
        "dedup_clusters": dg.AssetOut(description="Per record: cluster id, representative, "
                                      "similarity to it, match (unique/representative/exact/semantic), keep."),
        "dedup_cluster_report": dg.AssetOut(description="The top-N largest clusters with example members."),
        "dedup_summary": dg.AssetOut(description="Per source: before, after, removed within source, "
                                     "removed as duplicate of another source."),
    },
    ins={"merged_prompts": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
         "prompt_embeddings": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    group_name=GROUP, can_subset=False,
)
def dedup_clusters(context: dg.AssetExecutionContext, config: DedupConfig,
                   registry: SourceRegistryResource, merged_prompts: pa.Table, prompt_embeddings: pa.Table):
    reg = registry.load()
    priorities = {s.key: s.priority for s in reg.sources}
    kinds = {s.key: s.kind for s in reg.sources}
    res = cluster_prompts(merged_prompts, prompt_embeddings, priorities, kinds, config, log=context.log.info)
    c = res.clusters
    removed = int(c.num_rows - pc.sum(c["keep"]).as_py()) if c.num_rows else 0
    # accounting of what survives: rows_in = kept + removed (the table itself labels every row)
    acc = Accounting(rows_in=c.num_rows, rows_out=c.num_rows - removed)
    acc.removed_by_reason.update(r for r in c["removed_reason"].to_pylist() if r)
    md_summary = summary_markdown(res.summary)
    context.log.info("dedup summary:\n" + md_summary)
    yield dg.Output(c, output_name="dedup_clusters", metadata=stage_metadata(
        c, acc, preview_columns=["all_prompt_id", "cluster_id", "representative_id", "similarity", "match"],
        extra={**{k: v for k, v in res.stats.items()}, "summary": dg.MetadataValue.md(md_summary),
               "sources": dg.MetadataValue.json(sorted(set(c["source"].to_pylist())))}))
    yield dg.Output(res.report, output_name="dedup_cluster_report", metadata={
        "dagster/row_count": res.report.num_rows,
        "top_clusters": dg.MetadataValue.md(markdown_preview(
            res.report, n=20, columns=["cluster_id", "size", "sources", "min_similarity", "representative_prompt"]))})
    yield dg.Output(res.summary, output_name="dedup_summary", metadata={
        "dagster/row_count": res.summary.num_rows, "summary": dg.MetadataValue.md(md_summary)})


# ------------------------------------------------------------------------------ survivors


def select_survivors(merged: pa.Table, clusters: pa.Table, source: str) -> tuple[pa.Table, list[RowIssue], Accounting]:
    """This source's records kept by the global dedup; removed ones become issues with duplicate_of."""
    mine = clusters.filter(pc.equal(clusters["source"], source))
    info = {r["all_prompt_id"]: r for r in mine.to_pylist()}
    ids = merged["all_prompt_id"].to_pylist()
    missing = [i for i in ids if i not in info]
    if missing:
        raise ValueError(f"source {source!r}: {len(missing)} prompts are not in dedup_clusters "
                         f"(e.g. {missing[0]!r}); re-materialise dedup_clusters")
    keep_mask = [info[i]["keep"] for i in ids]
    issues = [RowIssue(reason=info[i]["removed_reason"], outcome="removed", source_row=row,
                       source_file=f, duplicate_of=info[i]["representative_id"],
                       detail=f"{info[i]['match']} duplicate, similarity {info[i]['similarity']:.3f}",
                       raw=p[:2000])
              for i, k, row, f, p in zip(ids, keep_mask, merged["source_row"].to_pylist(),
                                         merged["source_file"].to_pylist(), merged["prompt"].to_pylist())
              if not k]
    kept = merged.filter(pa.array(keep_mask, pa.bool_())) if ids else merged
    return kept, issues, Accounting.from_issues(len(ids), kept.num_rows, issues)


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    ins={"merged_prompts": dg.AssetIn(), "dedup_clusters": dg.AssetIn()},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="deduplicated_prompts", blocking=True),
                 dg.AssetCheckSpec("all_prompt_id_unique", asset="deduplicated_prompts")],
    description="The source's merged prompts that survive the global dedup.",
)
def deduplicated_prompts(context: dg.AssetExecutionContext, storage: StorageResource,
                         merged_prompts: pa.Table, dedup_clusters: pa.Table):
    key = context.partition_key
    try:
        kept, issues, acc = select_survivors(merged_prompts, dedup_clusters, key)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    report_issues(context, key, issues)
    storage.write_rejects(context.asset_key, key, rejects_table(key, "deduplicated_prompts", issues))
    yield dg.Output(kept, metadata=stage_metadata(
        kept, acc, text_column="prompt", preview_columns=["all_prompt_id", "prompt", "response"]))
    yield accounting_check(acc)
    yield unique_check(kept, "all_prompt_id")
