"""Global near-duplicate clusters over every source, their report and summary, and each source's survivors."""

from dataclasses import dataclass, field
import time
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resources.reasons import Reason

from ..common.accounting import Accounting, RowIssue
from ..common.metadata import markdown_preview
from ..common.vectors import vectors_of
from .clustering import components, dbscan_labels, faiss_graph, minhash_labels

CLUSTERS_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("cluster_id", pa.int64()),
    ("representative_id", pa.string()), ("representative_source", pa.string()),
    ("similarity", pa.float32()), ("match", pa.string()), ("cluster_size", pa.int64()),
    ("keep", pa.bool_()), ("removed_reason", pa.string()),
    ("language", pa.string()), ("representable", pa.bool_()),
])
UNDETERMINED = "und"
EMBEDDING_METHODS = ("faiss_graph", "dbscan")


@dataclass
class DedupResult:
    clusters: pa.Table
    report: pa.Table
    summary: pa.Table
    stats: dict = field(default_factory=dict)
    by_language: Optional[pa.Table] = None


def resolve_threshold(cfg, embeddings: pa.Table, rows: Optional[np.ndarray] = None,
                      model_threshold: Optional[Callable[[Optional[str]], float]] = None
                      ) -> tuple[float, str, Optional[str]]:
    """(threshold, where it came from, embedding model): the config's value when set, else the
    calibrated default of the model that made the embeddings (one model only). `model_threshold`:
    model name -> default threshold (default: resources.embeddings.default_threshold)."""
    if model_threshold is None:
        from resources.embeddings import default_threshold as model_threshold
    model = None
    if "model" in embeddings.column_names and embeddings.num_rows:
        col = embeddings["model"] if rows is None else embeddings["model"].take(pa.array(rows, pa.int64()))
        models = sorted(m for m in pc.unique(pc.cast(col, pa.string())).to_pylist() if m)
        if len(models) > 1:
            raise ValueError(f"the prompt embeddings come from {len(models)} models ({', '.join(models)}): "
                             "re-materialise prompt_embeddings for every source with one model")
        model = models[0] if models else None
    threshold = getattr(cfg.method, "threshold", None)  # minhash has a Jaccard threshold of its own
    if threshold is not None:
        return float(threshold), "config", model
    return float(model_threshold(model)), f"default of {model or 'an unknown model'}", model


def _richness(t: pa.Table) -> np.ndarray:
    score = np.zeros(t.num_rows, np.int64)
    for col in ("response", "chosen", "rejected", "reference_answer"):
        if col in t.column_names:
            filled = pc.fill_null(pc.greater(pc.utf8_length(t[col]), 0), False)
            score += np.asarray(filled, dtype=np.int64)
    return score


@dataclass
class _Groups:
    """Prompt groups: the records of one source with the same normalised prompt."""

    idx: np.ndarray  # group of each record
    lead: np.ndarray  # best-ranked record of each group
    rank: np.ndarray  # rank of each record (the first of a cluster in rank order is its representative)
    hash: list  # normalised-prompt hash of each group
    kind: list  # source kind of each group
    lang: list  # language of each group

    @property
    def n(self) -> int:
        return len(self.lead)


def _aligned_vectors(merged: pa.Table, embeddings: pa.Table, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each merged prompt in `embeddings`, its vector, whether the model represents it)."""
    n = len(ids)
    pos = {pid: i for i, pid in enumerate(embeddings["all_prompt_id"].to_pylist())}
    missing = [pid for pid in ids if pid not in pos]
    if missing:
        raise ValueError(f"{len(missing)} merged prompts have no embedding (e.g. {missing[0]!r}); "
                         "re-materialise prompt_embeddings for their sources")
    rows = np.fromiter((pos[p] for p in ids), np.int64, n)
    X = vectors_of(embeddings)[rows] if n else np.zeros((0, 0), np.float32)
    if "representable" in embeddings.column_names and n:
        rep = np.asarray(embeddings["representable"].take(pa.array(rows)).fill_null(True), bool)
    else:
        rep = np.ones(n, bool)
    return rows, X, rep


def _prompt_groups(merged: pa.Table, ids: list[str], sources: list[str], hashes: list, langs: list[str],
                   priorities: dict[str, int], kinds: dict[str, str]) -> _Groups:
    """Group the records by (source, normalised prompt) and rank them: source priority, then the
    richer record, then the id."""
    n = len(ids)
    group_of: dict[tuple, int] = {}
    g_idx = np.empty(n, np.int64)
    for i, key in enumerate(zip(sources, hashes)):
        g_idx[i] = group_of.setdefault(key, len(group_of))
    rich = _richness(merged)
    prio = np.array([priorities.get(s, 100) for s in sources], np.int64)
    order = sorted(range(n), key=lambda i: (prio[i], -rich[i], ids[i]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    g_lead = np.full(len(group_of), -1, np.int64)
    for i in order:
        if g_lead[g_idx[i]] < 0:
            g_lead[g_idx[i]] = i
    return _Groups(idx=g_idx, lead=g_lead, rank=rank, hash=[hashes[i] for i in g_lead],
                   kind=[kinds.get(sources[i], "") for i in g_lead], lang=[langs[i] for i in g_lead])


def _exact_links(groups: _Groups, scope: str) -> tuple[list[int], list[int], np.ndarray]:
    """Links between groups with the same normalised prompt (across sources; within a kind for
    scope `kind`), and the distinct prompts (the first group of each)."""
    scope_key = (lambda g: (groups.kind[g], groups.hash[g])) if scope == "kind" else (lambda g: groups.hash[g])
    first_with: dict = {}
    src, dst = [], []
    for g in range(groups.n):
        f = first_with.setdefault(scope_key(g), g)
        if f != g:
            src.append(g)
            dst.append(f)
    return src, dst, np.array(sorted(set(first_with.values())), np.int64)


def _bucket_labels(cfg, merged: pa.Table, X: np.ndarray, groups: _Groups, bucket: np.ndarray, threshold: float,
                   stats: dict, log: Optional[Callable[[str], None]]) -> np.ndarray:
    """The cluster label (a member's position) of each group of one bucket, by `cfg.method` (one of
    the method configs: the config's type admits no other)."""
    m = cfg.method
    if m.name == "faiss_graph":
        lab, gs = faiss_graph(X[groups.lead[bucket]], threshold, exact_max_n=m.exact_max_n, nlist=m.nlist,
                              nprobe=m.nprobe, seed=cfg.seed, max_neighbors=m.max_neighbors, force=m.search,
                              ivfpca_min_n=m.ivfpca_min_n, ivfpca_dims=m.ivfpca_dims, log=log)
        searches = set(filter(None, stats.get("search", "").split(", "))) | {gs.method}
        stats.update(search=", ".join(sorted(searches)), nlist=gs.nlist, nprobe=gs.nprobe,
                     edges=stats.get("edges", 0) + gs.edges)
        if gs.method == "ivfpca":  # compressed search: what the exact re-rank saw and kept
            stats.update(ivfpca_dims=gs.dims, pca_energy=round(gs.energy, 4),
                         candidate_pairs=stats.get("candidate_pairs", 0) + gs.candidates,
                         links_after_rerank=stats.get("links_after_rerank", 0) + gs.edges)
        return lab
    if m.name == "dbscan":
        return dbscan_labels(X[groups.lead[bucket]], threshold)
    texts = merged["prompt"].take(pa.array(groups.lead[bucket])).to_pylist()  # minhash
    return minhash_labels(texts, m.jaccard_threshold, m.num_perm, m.ngram, seed=cfg.seed + 1)


def _semantic_links(cfg, merged: pa.Table, X: np.ndarray, groups: _Groups, candidates: np.ndarray, by_lang: bool,
                    threshold: float, stats: dict, log: Optional[Callable[[str], None]]) -> tuple[list[int], list[int]]:
    """Links between distinct prompts found by `cfg.method`, in buckets (kind, language) that are
    never compared with each other."""
    bucket_key = lambda g: ((groups.kind[g] if cfg.scope == "kind" else ""), (groups.lang[g] if by_lang else ""))  # noqa: E731
    members: dict[tuple, list[int]] = {}
    for g in candidates.tolist():
        members.setdefault(bucket_key(g), []).append(g)
    src, dst = [], []
    for bucket in (np.asarray(members[k], np.int64) for k in sorted(members)):
        if len(bucket) < 2:
            continue
        lab = _bucket_labels(cfg, merged, X, groups, bucket, threshold, stats, log)
        src.extend(bucket.tolist())
        dst.extend(bucket[lab].tolist())
    return src, dst


def _clusters_table(ids: list[str], sources: list[str], langs: Optional[list[str]], X: np.ndarray, rep: np.ndarray,
                    groups: _Groups, g_label: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """One row per record: its cluster, representative, match kind, keep and removal reason.
    Returns (the table, the size of each group's cluster by label)."""
    n = len(ids)
    g_idx, g_lead, rank = groups.idx, groups.lead, groups.rank
    # representative group per cluster = the group holding the best-ranked record
    rep_group: dict[int, int] = {}
    for g in sorted(range(groups.n), key=lambda g: rank[g_lead[g]]):
        rep_group.setdefault(int(g_label[g]), g)
    cluster_sizes = np.bincount(g_label, minlength=groups.n)
    rep_of_group = np.array([rep_group[int(g_label[g])] for g in range(groups.n)], np.int64)
    # dense cluster ids in representative order
    cid_of_rep = {g: k for k, g in enumerate(sorted(set(rep_of_group.tolist()), key=lambda g: rank[g_lead[g]]))}
    rep_rec = g_lead[rep_of_group[g_idx]]  # representative record per record
    sim = np.einsum("ij,ij->i", X, X[rep_rec]).astype(np.float32) if n else np.zeros(0, np.float32)
    keep = rep_of_group[g_idx] == g_idx
    same_hash = np.array([groups.hash[rep_of_group[g]] == groups.hash[g] for g in g_idx.tolist()], bool) if n \
        else np.zeros(0, bool)
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
            reason.append(Reason.DUPLICATE_WITHIN_SOURCE if sources[rep_rec[i]] == sources[i]
                          else Reason.DUPLICATE_OF_OTHER_SOURCE)
    clusters = pa.Table.from_pydict({
        "all_prompt_id": ids, "source": sources,
        "cluster_id": [cid_of_rep[int(rep_of_group[g])] for g in g_idx.tolist()],
        "representative_id": [ids[r] for r in rep_rec.tolist()],
        "representative_source": [sources[r] for r in rep_rec.tolist()],
        "similarity": sim, "match": match,
        "cluster_size": cluster_sizes[g_label[g_idx]].astype(np.int64) if n else [],
        "keep": keep, "removed_reason": reason,
        "language": langs if langs is not None else [None] * n, "representable": rep,
    }, schema=CLUSTERS_SCHEMA)
    return clusters, cluster_sizes


def cluster_prompts(merged: pa.Table, embeddings: pa.Table, priorities: dict[str, int],
                    kinds: dict[str, str], cfg,
                    log: Optional[Callable[[str], None]] = None,
                    sources: Optional[list[str]] = None,
                    model_threshold: Optional[Callable[[Optional[str]], float]] = None) -> DedupResult:
    """Pure: every source's merged prompts + embeddings -> per-record clusters, report, summary.
    `cfg`: a `DedupConfig` (`method`: one of the method configs, each with its own fields; scope,
    cross_language, top_n, seed); `sources`:
    every source of the run (sources without rows get a summary row of zeros).

    Semantic links (faiss_graph, dbscan) join only prompts the model can represent (embedding
    column `representable`) and, unless `cfg.cross_language`, of the same `language` (when
    merged has that column). Exact duplicates (same normalised prompt) are joined regardless."""
    t0 = time.monotonic()
    m = cfg.method
    run_sources = sources
    ids = merged["all_prompt_id"].to_pylist()
    sources = merged["source"].to_pylist()
    hashes = merged["prompt_norm_hash"].to_pylist()
    rows, X, rep = _aligned_vectors(merged, embeddings, ids)
    threshold, threshold_source, model = resolve_threshold(cfg, embeddings, rows, model_threshold)
    has_language = "language" in merged.column_names
    langs = ([(x or UNDETERMINED) for x in merged["language"].to_pylist()] if has_language
             else [UNDETERMINED] * len(ids))
    groups = _prompt_groups(merged, ids, sources, hashes, langs, priorities, kinds)
    ex_src, ex_dst, uniq = _exact_links(groups, cfg.scope)
    # semantic: one vector per distinct normalised prompt; prompts the model cannot represent take no part
    by_lang = has_language and not cfg.cross_language
    uniq_rep = rep[groups.lead[uniq]] if len(uniq) else np.zeros(0, bool)
    stats: dict = {"records": len(ids), "prompt_groups": groups.n, "distinct_prompts": len(uniq),
                   "method": m.name, "threshold": threshold, "threshold_source": threshold_source,
                   "embedding_model": model or "", "unrepresentable": int((~uniq_rep).sum()),
                   "language_rule": ("semantic merges within one language" if by_lang else
                                     "off (cross_language)" if has_language else "no language column")}
    candidates = uniq[uniq_rep] if m.name in EMBEDDING_METHODS else uniq
    sem_src, sem_dst = _semantic_links(cfg, merged, X, groups, candidates, by_lang, threshold, stats, log)
    g_label = components(groups.n, np.asarray(ex_src + sem_src, np.int64), np.asarray(ex_dst + sem_dst, np.int64))
    clusters, cluster_sizes = _clusters_table(ids, sources, langs if has_language else None, X, rep, groups, g_label)
    stats["clusters_multi"] = int((cluster_sizes > 1).sum())
    by_language = language_summary(clusters)
    stats["languages"] = {r["language"]: r["before"] for r in by_language.to_pylist()}
    stats["seconds"] = round(time.monotonic() - t0, 3)
    return DedupResult(clusters, cluster_report(clusters, merged, cfg.top_n), dedup_summary(clusters, run_sources),
                       stats, by_language)


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


def dedup_summary(clusters: pa.Table, sources: Optional[list[str]] = None) -> pa.Table:
    """Per source: before, after, removed within the source, removed as a duplicate of another.
    `sources`: also list these (a source without rows gets zeros)."""
    out = {s: {"source": s, "before": 0, "after": 0, "removed_within_source": 0, "removed_other_source": 0,
               "removed_exact": 0, "removed_semantic": 0} for s in (sources or [])}
    for s, keep, reason, match in zip(*(clusters[c].to_pylist() for c in ("source", "keep", "removed_reason", "match"))):
        r = out.setdefault(s, {"source": s, "before": 0, "after": 0, "removed_within_source": 0,
                               "removed_other_source": 0, "removed_exact": 0, "removed_semantic": 0})
        r["before"] += 1
        if keep:
            r["after"] += 1
        else:
            r["removed_within_source" if reason == Reason.DUPLICATE_WITHIN_SOURCE else "removed_other_source"] += 1
            r["removed_exact" if match == "exact" else "removed_semantic"] += 1
    return pa.Table.from_pylist(sorted(out.values(), key=lambda r: r["source"]), schema=SUMMARY_SCHEMA)


LANGUAGE_SCHEMA = pa.schema([
    ("language", pa.string()), ("before", pa.int64()), ("after", pa.int64()),
    ("removed_exact", pa.int64()), ("removed_semantic", pa.int64()), ("unrepresentable", pa.int64()),
])


def language_summary(clusters: pa.Table) -> pa.Table:
    """Per language (the merged prompts' `language`; 'und' when absent): before, after, removed
    as exact / semantic duplicates, and records the embedding model cannot represent."""
    out: dict[str, dict] = {}
    cols = ("language", "keep", "match", "representable")
    for lang, keep, match, rep in zip(*(clusters[c].to_pylist() for c in cols)):
        lang = lang or UNDETERMINED
        r = out.setdefault(lang, {"language": lang, "before": 0, "after": 0, "removed_exact": 0,
                                  "removed_semantic": 0, "unrepresentable": 0})
        r["before"] += 1
        r["after"] += bool(keep)
        if not keep:
            r["removed_exact" if match == "exact" else "removed_semantic"] += 1
        r["unrepresentable"] += not rep
    return pa.Table.from_pylist(sorted(out.values(), key=lambda r: (-r["before"], r["language"])),
                                schema=LANGUAGE_SCHEMA)


def language_markdown(by_language: Optional[pa.Table]) -> str:
    if by_language is None:
        return "_(no rows)_"
    return markdown_preview(by_language, n=by_language.num_rows or 1)


def summary_markdown(summary: pa.Table, by_language: Optional[pa.Table] = None) -> str:
    """The per-source table, then (when given) the per-language table."""
    md = markdown_preview(summary, n=summary.num_rows or 1)
    if by_language is not None and by_language.num_rows:
        md += "\n\nBy language:\n\n" + language_markdown(by_language)
    return md


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


#: the columns of dedup_clusters that deciding a source's survivors needs
SURVIVOR_COLUMNS = ["all_prompt_id", "keep", "removed_reason", "representative_id", "match", "similarity"]


class SurvivorFilter:
    """`select_survivors` over record batches of the source's merged prompts: the working set is
    this source's rows of dedup_clusters (SURVIVOR_COLUMNS, Arrow columns, no Python objects per
    row), the removed rows' issues and the counts; the merged prompts pass through one batch at a
    time. `check(id_batches)` first (a pass over the all_prompt_id column only) so that a stale
    dedup_clusters fails before anything is written, with select_survivors' message."""

    def __init__(self, clusters_mine: pa.Table, source: str):
        self.source = source
        self.mine = clusters_mine.select(SURVIVOR_COLUMNS).combine_chunks()
        self.ids = self.mine["all_prompt_id"].combine_chunks() if self.mine.num_rows else pa.array([], pa.string())
        self.issues: list[RowIssue] = []
        self.rows_in = 0

    def check(self, id_batches) -> None:
        missing, first = 0, None
        for ids in id_batches:
            ids = ids.column(0) if isinstance(ids, pa.RecordBatch) else ids
            absent = pc.invert(pc.is_in(ids, value_set=self.ids))
            n = int(pc.sum(absent).as_py() or 0)
            if n and first is None:
                first = ids.filter(absent)[0].as_py()
            missing += n
        if missing:
            raise ValueError(f"source {self.source!r}: {missing} prompts are not in dedup_clusters "
                             f"(e.g. {first!r}); re-materialise dedup_clusters")

    def filter(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.rows_in += batch.num_rows
        if not batch.num_rows:
            return batch
        idx = pc.index_in(batch.column("all_prompt_id"), value_set=self.ids)
        if idx.null_count:
            raise ValueError(f"source {self.source!r}: prompts not in dedup_clusters; re-materialise dedup_clusters")
        keep = pc.take(self.mine["keep"], idx)
        removed = pc.invert(keep)
        if int(pc.sum(removed).as_py() or 0):
            info = self.mine.take(idx.filter(removed)).to_pylist()
            gone = batch.filter(removed)
            for r, row, f, p in zip(info, gone.column("source_row").to_pylist(), gone.column("source_file").to_pylist(),
                                    gone.column("prompt").to_pylist()):
                self.issues.append(RowIssue(reason=r["removed_reason"], outcome="removed", source_row=row,
                                            source_file=f, duplicate_of=r["representative_id"],
                                            detail=f"{r['match']} duplicate, similarity {r['similarity']:.3f}",
                                            raw=p[:2000]))
        return batch.filter(keep)

    def batches(self, batches) -> "Iterator[pa.RecordBatch]":
        for b in batches:
            yield self.filter(b)

    def accounting(self, rows_out: int) -> Accounting:
        return Accounting.from_issues(self.rows_in, rows_out, self.issues)
