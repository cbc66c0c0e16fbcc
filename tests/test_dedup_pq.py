"""faiss_graph's compressed search (`ivfpca`): IVF on PCA + residual-norm codes, every candidate
pair re-ranked on the exact vectors. On real USE embeddings of GSM8K questions and their planted
near-duplicates: the codes bound every cosine from above, the re-rank makes every link exact (no
false links), and with every cell probed the links are exactly the exact search's."""

import random

import numpy as np
import pytest

from posttrain_assets.dedup.assets import DedupConfig, FaissGraphDedup
from posttrain_assets.dedup.clustering import (exact_edges, faiss_graph, graph_method, ivfpca_edges,
                                               pca_codes)
from posttrain_assets.dedup.duplicates import cluster_prompts
from posttrain_assets.dedup.embedding import conversation_vectors, embedding_parts, embeddings_table
from resources.embeddings import EmbeddingClient

from .test_dedup import GSM, _merged, variants

T = 0.9


@pytest.fixture(scope="module")
def client():
    return EmbeddingClient()


@pytest.fixture(scope="module")
def X(client):
    """200 real GSM8K questions + 4 near-duplicate variants of each of the first 60 (440 vectors)."""
    rng = random.Random(1)
    texts = GSM[:200]
    for p in GSM[:60]:
        texts += variants(p, rng)
    return client.encode(texts)


def pairs(src, dst) -> set:
    return set(zip(np.minimum(src, dst).tolist(), np.maximum(src, dst).tolist()))


def test_codes_bound_every_cosine_from_above(X):
    Z, V, energy = pca_codes(X, 32)
    assert Z.shape == (len(X), 33) and V.shape == (512, 32) and 0.3 < energy < 1.0
    assert np.allclose(np.linalg.norm(Z, axis=1), np.linalg.norm(X, axis=1), atol=1e-5)
    exact, bound = X @ X.T, Z @ Z.T
    assert (bound >= exact - 1e-5).all()  # Cauchy-Schwarz on the residuals: a superset of links
    assert (bound - exact).max() > 0.05  # and only a bound: the re-rank is needed


def test_every_cell_probed_gives_exactly_the_exact_links(X):
    ex_src, ex_dst = exact_edges(X, T)
    truth = pairs(ex_src, ex_dst)
    assert len(truth) > 100  # the planted variants (and a few real pairs)
    for nlist, nprobe in ((1, 1), (4, 4)):
        src, dst, info = ivfpca_edges(X, T, nlist, nprobe, dims=32)
        assert len(src) == len(pairs(src, dst)) == len(truth)  # each pair once
        assert pairs(src, dst) == truth
        assert info["candidates"] > len(truth) and info["dims"] == 32
    exact, _ = faiss_graph(X, T, force="exact")
    lab, st = faiss_graph(X, T, force="ivfpca", nlist=4, nprobe=4, ivfpca_dims=32)
    assert np.array_equal(lab, exact)
    assert (st.method, st.nlist, st.nprobe, st.dims, st.edges) == ("ivfpca", 4, 4, 32, len(truth))
    assert st.candidates > st.edges


@pytest.mark.parametrize("dims", [16, 128])
def test_few_cells_probed_never_a_false_link(X, dims):
    truth = pairs(*exact_edges(X, T))
    src, dst, info = ivfpca_edges(X, T, 16, 1, dims=dims)
    found = pairs(src, dst)
    sims = np.einsum("ij,ij->i", X[src], X[dst])
    assert (sims >= T).all() and (src != dst).all()  # every link is exact
    assert found <= truth  # the IVF may miss pairs, never invent one
    assert len(found) >= 0.5 * len(truth)
    # clusters refine the exact ones: two vectors joined here are joined by the exact search
    exact, _ = faiss_graph(X, T, force="exact")
    lab, st = faiss_graph(X, T, force="ivfpca", nlist=16, nprobe=1, ivfpca_dims=dims)
    for c in np.unique(lab):
        assert len(np.unique(exact[lab == c])) == 1
    assert st.edges == len(found) and st.candidates == info["candidates"] >= st.edges


def test_size_rule_picks_the_search():
    assert graph_method(100, exact_max_n=100, ivfpca_min_n=500) == "exact"
    assert graph_method(101, exact_max_n=100, ivfpca_min_n=500) == "ivf"
    assert graph_method(500, exact_max_n=100, ivfpca_min_n=500) == "ivf"
    assert graph_method(501, exact_max_n=100, ivfpca_min_n=500) == "ivfpca"
    assert graph_method(10**9, exact_max_n=100, ivfpca_min_n=0) == "ivf"  # 0: never compressed
    assert graph_method(10, force="ivfpca") == "ivfpca"
    assert graph_method(10**7) == "ivfpca" and graph_method(10**6) == "ivf"  # defaults
    with pytest.raises(ValueError, match="ivfpca"):
        graph_method(10, force="pq")


def test_auto_switch_above_the_size_and_memory_mapped_vectors(X, tmp_path):
    lab, st = faiss_graph(X, T, exact_max_n=100, ivfpca_min_n=300, nlist=1, ivfpca_dims=64)
    assert st.method == "ivfpca"
    assert np.array_equal(lab, faiss_graph(X, T, force="exact")[0])
    assert faiss_graph(X, T, exact_max_n=100, ivfpca_min_n=len(X))[1].method == "ivf"
    # the vectors may stay on disk: read in blocks from a memory-mapped .npy
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    lab_mm, st_mm = faiss_graph(mm, T, force="ivfpca", nlist=4, nprobe=2, ivfpca_dims=64)
    lab_ram, st_ram = faiss_graph(X, T, force="ivfpca", nlist=4, nprobe=2, ivfpca_dims=64)
    assert np.array_equal(lab_mm, lab_ram) and (st_mm.edges, st_mm.candidates) == (st_ram.edges, st_ram.candidates)


def test_cluster_prompts_reports_the_compressed_search(client):
    rng = random.Random(2)
    rows = [{"all_prompt_id": f"a:{i}", "source": "a", "prompt": q} for i, q in enumerate(GSM[:40])]
    rows += [{"all_prompt_id": f"b:{i}", "source": "b", "prompt": v}
             for i, v in enumerate(v for q in GSM[:10] for v in variants(q, rng)[2:])]
    merged = _merged(rows)
    emb = embeddings_table(merged["all_prompt_id"].to_pylist(),
                           conversation_vectors(embedding_parts(merged), client.encode), model=client.model_name)
    prio, kinds = {"a": 10, "b": 20}, {"a": "sft", "b": "sft"}
    base = cluster_prompts(merged, emb, prio, kinds, DedupConfig())
    assert base.stats["search"] == "exact" and "candidate_pairs" not in base.stats
    # above ivfpca_min_n distinct prompts (here 3) the compressed search runs; all cells probed
    # (nlist 2 <= nprobe 3): the same clusters as the exact search, row for row
    auto = cluster_prompts(merged, emb, prio, kinds, DedupConfig(method=FaissGraphDedup(exact_max_n=2, ivfpca_min_n=3, nlist=2)))
    forced = cluster_prompts(merged, emb, prio, kinds, DedupConfig(method=FaissGraphDedup(search="ivfpca", nlist=1, ivfpca_dims=16)))
    for res in (auto, forced):
        assert res.stats["search"] == "ivfpca"
        assert res.clusters.equals(base.clusters)
        # (the exact search counts a pair twice when both rows are in one block; the re-rank once)
        assert res.stats["links_after_rerank"] == res.stats["edges"] > 0
        assert res.stats["candidate_pairs"] >= res.stats["links_after_rerank"]
    assert (auto.stats["ivfpca_dims"], forced.stats["ivfpca_dims"]) == (128, 16)
    assert base.clusters["match"].to_pylist().count("semantic") >= 10  # the planted variants
