"""Decontamination stage: `benchmark_index` (global: every benchmark of the benchmarks registry, its
n-grams and question embeddings, built once) -> `contamination` (per source: every record checked
against it) -> `contamination_report` (global: per source x benchmark, with the blocking check that
stops the export when a source holds more than `max_share` of a benchmark's items)."""

from typing import Literal, Optional

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partitions import source_partitions
from resources.embeddings import EmbeddingClient, default_threshold

from ..common import asset_names as A
from ..common.accounting import Accounting
from ..common.metadata import accounting_check, markdown_preview, stage_metadata
from ..common.pools import GPU_POOL
from ..common.vectors import vectors_of
from .benchmarks import BenchmarkError, load_all, load_benchmarks
from .contamination import CheckSettings, check_records, report, report_markdown
from .ngrams import Matcher, index_rows

GROUP = "decontamination"
#: the cosine above which a benchmark question is a semantic candidate, per embedding model. USE
#: multilingual, GSM8K test item 0 among all 1,319: a Japanese translation 0.746, a Chinese one 0.836, an
#: English paraphrase 0.960 (the second-nearest item 0.55-0.68). 59 of the 300 bundled GSM8K train rows
#: reach 0.7 with some test item (same topic), 1 also stands 0.15 above its second-nearest (the margin)
SEMANTIC_THRESHOLDS = {"google/universal-sentence-encoder-multilingual-3": 0.7}


def semantic_threshold(model: Optional[str]) -> float:
    return SEMANTIC_THRESHOLDS.get(model or "", default_threshold(model))


class BenchmarkIndexConfig(dg.Config):
    # the benchmarks registry: "" = $POSTTRAIN_BENCHMARKS, else the bundled
    # posttrain_assets/decontamination/benchmarks.yaml
    benchmarks_path: str = ""
    n: int = 8  # n-gram size in words (Tulu 3, open-r1: 8)
    cjk_n: int = 8  # n-gram size in characters for items that are mostly Japanese / Chinese characters
    semantic: bool = True  # embed the questions (the embeddings resource) for the semantic candidates


@dg.asset(
    group_name=GROUP, kinds={"parquet"}, pool=GPU_POOL,
    description="Every item of the benchmarks registry (question, reference answer) as normalised tokens, "
                "n-gram hashes (which of them are distinctive: no other item of its benchmark has them) and "
                "the question's embedding: built once, read by every source's contamination check.",
)
def benchmark_index(context: dg.AssetExecutionContext, config: BenchmarkIndexConfig,
                    embeddings: EmbeddingClient) -> dg.Output:
    try:
        specs = load_benchmarks(config.benchmarks_path or None)
        items = load_all(specs)
    except BenchmarkError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if config.n < 1 or config.cjk_n < 1:
        raise dg.Failure(description=f"n and cjk_n must be >= 1, got {config.n}, {config.cjk_n}", allow_retries=False)
    table, stats = index_rows(items, config.n, config.cjk_n, {s.key for s in specs if s.answer_match})
    model = ""
    if config.semantic and table.num_rows:
        questions = pc.equal(table["part"], "question")
        texts = table.filter(questions)["question"].to_pylist()
        vecs = embeddings.encode(texts, log=context.log.info)
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        it = iter(vecs.tolist())
        column = [next(it) if q else None for q in questions.to_pylist()]
        table = table.set_column(table.schema.get_field_index("vector"), "vector",
                                 pa.array(column, pa.list_(pa.float32())))
        model = embeddings.model_name
    short = {b: {p: len(v) for p, v in parts.items()} for b, parts in stats["too_short"].items()}
    context.log.info(f"benchmark_index: {sum(stats['items'].values())} items of {len(specs)} benchmarks, "
                     f"{table.num_rows} indexed parts")
    return dg.Output(table, metadata={
        "dagster/row_count": table.num_rows,
        "benchmarks": dg.MetadataValue.json({s.key: {"items": stats["items"].get(s.key, 0), "language": s.language,
                                                     "path": str(s.path), "licence": s.licence} for s in specs}),
        "items_total": sum(stats["items"].values()), "n": config.n, "cjk_n": config.cjk_n,
        "too_short_for_one_ngram": dg.MetadataValue.json(short), "embedding_model": model or "(semantic off)",
        "preview": dg.MetadataValue.md(markdown_preview(table, columns=["benchmark", "item_id", "part", "n",
                                                                        "question"])),
    })


class ContaminationConfig(dg.Config):
    # coverage: Tulu 3's token coverage over the item's distinctive n-grams (template n-grams that other items
    # of the benchmark share do not count); tulu: over all its n-grams; any_ngram: one shared n-gram (open-r1)
    rule: Literal["coverage", "tulu", "any_ngram"] = "coverage"
    threshold: float = 0.5  # coverage / tulu: a record holds the item when more than this share is covered
    check_responses: bool = True  # also match responses against the benchmarks' reference answers
    # cosine of the prompt's final turn with a benchmark question for a semantic candidate (translations,
    # paraphrases: reported beside the n-gram verdict, never part of it); None = the model's value in
    # SEMANTIC_THRESHOLDS, else its calibrated near-duplicate threshold
    semantic_threshold: Optional[float] = None
    # ... and the nearest question at least this much above the second-nearest (a problem on the same topic as
    # many items is near several of them at once; a translation of one item stands out)
    semantic_margin: float = 0.15
    batch_rows: int = 5000


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    ins={n: dg.AssetIn() for n in (A.SFT_RECORDS, A.COT_RECORDS, A.PREFERENCE_RECORDS, A.PROMPT_EMBEDDINGS,
                                   A.BENCHMARK_INDEX)},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="contamination", blocking=True)],
    description="Every record of the source (prompt: its user turns; response: against reference answers) "
                "checked against the benchmark index: contaminated or not, the items the n-gram rule fired "
                "for (coverage, shared n-grams, the matched span), the closest near miss, and the embedder's "
                "nearest benchmark question above a threshold as a separate signal.",
)
def contamination(context: dg.AssetExecutionContext, config: ContaminationConfig,
                  sft_records: pa.Table, cot_records: pa.Table, preference_records: pa.Table,
                  prompt_embeddings: pa.Table, benchmark_index: pa.Table) -> dg.Output:
    if not 0 <= config.threshold <= 1:
        raise dg.Failure(description=f"threshold must be in [0, 1], got {config.threshold}", allow_retries=False)
    tables = {A.SFT_RECORDS: sft_records, A.COT_RECORDS: cot_records, A.PREFERENCE_RECORDS: preference_records}
    models = [m for m in (prompt_embeddings["model"].unique().to_pylist() if prompt_embeddings.num_rows else []) if m]
    threshold = config.semantic_threshold if config.semantic_threshold is not None else \
        semantic_threshold(models[0] if models else None)
    vectors, item_vectors, item_keys = _semantic_inputs(prompt_embeddings, benchmark_index)
    res = check_records(tables, Matcher(benchmark_index),
                        CheckSettings(config.rule, config.threshold, config.check_responses,
                                      threshold if item_vectors is not None else None, config.semantic_margin,
                                      config.batch_rows),
                        vectors, item_vectors, item_keys, log=context.log.info)
    acc = Accounting(rows_in=sum(t.num_rows for t in tables.values()), rows_out=res.table.num_rows)
    flagged = int(pc.sum(res.table["contaminated"]).as_py() or 0) if res.table.num_rows else 0
    yield dg.Output(res.table, metadata=stage_metadata(
        res.table, acc, preview_columns=["record_asset", "all_prompt_id", "contaminated", "benchmark", "item_id",
                                         "coverage", "span"],
        extra={"contaminated": flagged, "by_record_table": dg.MetadataValue.json(res.by_asset),
               "by_benchmark": dg.MetadataValue.json(res.by_benchmark), "semantic_candidates": res.semantic,
               "rule": config.rule, "threshold": config.threshold,
               "semantic_threshold": threshold if item_vectors is not None else "(off)"}))
    yield accounting_check(acc)


def _semantic_inputs(prompt_embeddings: pa.Table, index: pa.Table):
    """all_prompt_id -> the unit vector of the prompt's final turn (the first half of the stored
    [final turn ; earlier turns] / sqrt(2)), and the benchmark questions' vectors with their keys."""
    if not index.num_rows or not prompt_embeddings.num_rows:
        return {}, None, None
    q = index.filter(pc.invert(pc.is_null(index["vector"])))
    if not q.num_rows:
        return {}, None, None
    items = vectors_of(q, "vector")
    emb = vectors_of(prompt_embeddings)
    if emb.shape[1] != 2 * items.shape[1]:
        raise dg.Failure(description=f"prompt_embeddings has dimension {emb.shape[1]}, the benchmark index's "
                                     f"questions {items.shape[1]} (x2 expected): materialise benchmark_index with "
                                     f"the same embeddings model", allow_retries=False)
    finals = emb[:, :items.shape[1]]
    finals = finals / np.maximum(np.linalg.norm(finals, axis=1, keepdims=True), 1e-12)
    ok = prompt_embeddings["representable"].to_pylist()
    vectors = {i: v for i, v, r in zip(prompt_embeddings["all_prompt_id"].to_pylist(), finals, ok) if r}
    return vectors, items, list(zip(q["benchmark"].to_pylist(), q["item_id"].to_pylist()))


class ContaminationReportConfig(dg.Config):
    max_share: float = 0.02  # a source is over the threshold above this share of a benchmark's items (Tulu 3: 2%)
    allow_over_threshold: list[str] = []  # sources allowed over it (the check passes and says so); ["*"] = all


@dg.asset(
    group_name=GROUP, kinds={"parquet"},
    ins={A.CONTAMINATION: dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
         A.BENCHMARK_INDEX: dg.AssetIn()},
    check_specs=[dg.AssetCheckSpec("benchmark_share", asset="contamination_report", blocking=True,
                                   description="no source holds more than max_share of a benchmark's items "
                                               "(unless allowed): a failure stops the export")],
    description="Per source x benchmark: items matched, their share of the benchmark, rows flagged, examples "
                "(record, item, span), semantic candidates, and the dataset-level flag (share > max_share).",
)
def contamination_report(context: dg.AssetExecutionContext, config: ContaminationReportConfig,
                         contamination: pa.Table, benchmark_index: pa.Table):
    questions = benchmark_index.filter(pc.equal(benchmark_index["part"], "question")) if benchmark_index.num_rows \
        else benchmark_index
    md = _latest_index_metadata(context)
    checked = {b: v["items"] for b, v in md.items()} if md else _count(questions)
    table = report(contamination, checked, config.max_share)
    over = [r for r in table.to_pylist() if r["over_threshold"]]
    allowed = [r for r in over if "*" in config.allow_over_threshold or r["source"] in config.allow_over_threshold]
    blocking = [r for r in over if r not in allowed]
    text = report_markdown(table, checked, _rule(context), config.max_share)
    context.log.info("contamination report:\n" + text)
    yield dg.Output(table, metadata={
        "dagster/row_count": table.num_rows, "report": dg.MetadataValue.md(text),
        "benchmarks_checked": dg.MetadataValue.json(checked), "max_share": config.max_share,
        "rows_checked": contamination.num_rows,
        "rows_contaminated": int(pc.sum(contamination["contaminated"]).as_py() or 0) if contamination.num_rows else 0,
        "over_threshold": dg.MetadataValue.json([f"{r['source']}:{r['benchmark']}" for r in over])})
    yield dg.AssetCheckResult(
        check_name="benchmark_share", passed=not blocking, severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(f"source {r['source']!r} holds {r['items_matched']} of {r['benchmark_items']} items "
                               f"of {r['benchmark']!r} ({r['share']:.2%} > {config.max_share:.2%})" for r in blocking)
                     or "no source over the threshold"),
        metadata={"over": len(over), "allowed": dg.MetadataValue.json([f"{r['source']}:{r['benchmark']}"
                                                                        for r in allowed]),
                  "blocking": len(blocking)})


def _count(questions: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in questions["benchmark"].to_pylist() if questions.num_rows else []:
        out[b] = out.get(b, 0) + 1
    return out


def _latest_index_metadata(context) -> dict:
    """The benchmarks (and their item counts, short items included) of the index this report reads."""
    ev = context.instance.get_latest_materialization_event(dg.AssetKey(A.BENCHMARK_INDEX))
    mat = ev.asset_materialization if ev else None
    value = mat.metadata.get("benchmarks") if mat else None
    return value.value if value is not None else {}


def _rule(context) -> str:
    ev = context.instance.get_latest_materialization_event(dg.AssetKey(A.CONTAMINATION))
    mat = ev.asset_materialization if ev else None
    value = mat.metadata.get("rule") if mat else None
    return value.value if value is not None else "coverage"
