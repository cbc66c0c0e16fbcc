"""Near-duplicate clustering of unit vectors (and texts). Pure numpy / faiss / scipy.

`faiss_graph` links every pair with cosine similarity >= threshold and returns the connected
components. With the exact search (every pair compared, blocked matrix products) the components
are exactly DBSCAN's clusters for `metric="cosine", eps = 1 - threshold, min_samples <= 2`
(every point with a neighbour is a core point, so a cluster is a connected component of the
eps-graph; DBSCAN's noise points are our singletons).

Above `exact_max_n` vectors the all-pairs search is quadratic (measured: ~12 s at 50k on 2 cores,
hours at 1M), so it switches to an inverted-file search: k-means (faiss) splits the space into
`nlist` cells, each vector lives in its nearest cell, and each cell is compared (blocked matrix
products) against every vector that has that cell among its `nprobe` nearest. A pair is missed
only when neither vector has the other's cell among its nprobe nearest; the benchmark measures the
agreement with the exact result (adjusted Rand index).
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BLOCK = 4096


@dataclass
class GraphStats:
    method: str
    n: int
    edges: int
    seconds: float
    nlist: int = 1
    nprobe: int = 1


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label per node (labels are the smallest node index of each component)."""
    if n == 0:
        return np.zeros(0, np.int64)
    g = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, lab = connected_components(g, directed=False)
    # relabel by the first node of each component: stable, order-independent ids
    first = np.full(lab.max() + 1, n, np.int64)
    np.minimum.at(first, lab, np.arange(n))
    return first[lab]


def _threshold_edges(sims: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float,
                     max_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) pairs with sims >= threshold, i != j; at most max_neighbors strongest per row."""
    r, c = np.nonzero(sims >= threshold)
    gi, gj = rows[r], cols[c]
    keep = gi != gj
    r, c, gi, gj = r[keep], c[keep], gi[keep], gj[keep]
    if max_neighbors and len(r):
        counts = np.bincount(r, minlength=sims.shape[0])
        if counts.max() > max_neighbors:  # dense rows: keep each row's strongest links
            order = np.lexsort((-sims[r, c], r))
            r, c, gi, gj = r[order], c[order], gi[order], gj[order]
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.arange(len(r)) - starts[r]
            keep = rank < max_neighbors
            gi, gj = gi[keep], gj[keep]
    return gi, gj


def exact_edges(X: np.ndarray, threshold: float, max_neighbors: int = 0,
                log: Optional[Callable[[str], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) with X_i . X_j >= threshold, by blocked matrix products."""
    n = len(X)
    src, dst = [], []
    idx = np.arange(n)
    t0 = time.monotonic()
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        # only the upper triangle: block rows vs columns from `start` on
        sims = X[start:stop] @ X[start:].T
        i, j = _threshold_edges(sims, idx[start:stop], idx[start:], threshold, max_neighbors)
        src.append(i)
        dst.append(j)
        if log and (stop == n or (start // BLOCK) % 10 == 9):
            log(f"exact search: {stop:,}/{n:,} rows ({stop / max(time.monotonic() - t0, 1e-9):,.0f} rows/s)")
    return np.concatenate(src) if src else np.zeros(0, np.int64), np.concatenate(dst) if dst else np.zeros(0, np.int64)


def _kmeans(X: np.ndarray, nlist: int, seed: int, train_size: int, niter: int) -> np.ndarray:
    import faiss

    rng = np.random.default_rng(seed)
    sample = X if len(X) <= train_size else X[rng.choice(len(X), train_size, replace=False)]
    km = faiss.Kmeans(X.shape[1], nlist, niter=niter, seed=seed, spherical=True,
                      gpu=faiss.get_num_gpus() > 0, verbose=False,
                      max_points_per_centroid=max(1, train_size // nlist + 1))
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return km.centroids


def _nearest_cells(X: np.ndarray, centroids: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    _, cells = index.search(np.ascontiguousarray(X, dtype=np.float32), k)
    return cells


def ivf_edges(X: np.ndarray, threshold: float, nlist: int, nprobe: int, *, seed: int = 0,
              train_size: int = 0, niter: int = 6, max_neighbors: int = 0,
              log: Optional[Callable[[str], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate all-pairs >= threshold: each cell's members vs every vector probing that cell."""
    n = len(X)
    t0 = time.monotonic()
    train_size = train_size or max(40 * nlist, 20_000)  # faiss wants >= 39 points per centroid
    centroids = _kmeans(X, nlist, seed, train_size, niter)
    cells = _nearest_cells(X, centroids, nprobe)  # [n, nprobe], nearest first
    if log:
        log(f"ivf: k-means {nlist} cells + assignment in {time.monotonic() - t0:.1f}s")
    home = cells[:, 0]
    # members (home cell) and probers (any of the nprobe cells) per cell, via sorting
    m_order = np.argsort(home, kind="stable")
    m_bounds = np.searchsorted(home[m_order], np.arange(nlist + 1))
    flat_cells = cells.ravel()
    flat_rows = np.repeat(np.arange(n), nprobe)
    p_order = np.argsort(flat_cells, kind="stable")
    p_rows = flat_rows[p_order]
    p_bounds = np.searchsorted(flat_cells[p_order], np.arange(nlist + 1))
    src, dst = [], []
    done = 0
    for c in range(nlist):
        members = m_order[m_bounds[c]:m_bounds[c + 1]]
        if len(members) == 0:
            continue
        probers = p_rows[p_bounds[c]:p_bounds[c + 1]]
        B = X[probers]
        for s in range(0, len(members), BLOCK):
            rows = members[s:s + BLOCK]
            sims = X[rows] @ B.T
            i, j = _threshold_edges(sims, rows, probers, threshold, max_neighbors)
            src.append(i)
            dst.append(j)
        done += len(members)
        if log and (c + 1) % max(1, nlist // 10) == 0:
            log(f"ivf search: {done:,}/{n:,} rows ({done / max(time.monotonic() - t0, 1e-9):,.0f} rows/s)")
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def default_nlist(n: int) -> int:
    """~sqrt(n) cells balances k-means + assignment (n * nlist) against the join (n^2 / nlist)."""
    return int(max(1, min(65536, round(np.sqrt(n)))))


def faiss_graph(X: np.ndarray, threshold: float, *, exact_max_n: int = 100_000, nlist: int = 0,
                nprobe: int = 3, seed: int = 0, max_neighbors: int = 0, force: str = "",
                log: Optional[Callable[[str], None]] = None) -> tuple[np.ndarray, GraphStats]:
    """Component label per vector; exact below `exact_max_n` (or force='exact'), IVF above."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    t0 = time.monotonic()
    mode = force or ("exact" if n <= exact_max_n else "ivf")
    if mode == "exact":
        src, dst = exact_edges(X, threshold, max_neighbors, log)
        stats = GraphStats("exact", n, len(src), 0.0)
    else:
        nl = nlist or default_nlist(n)
        nl = max(1, min(nl, n))
        src, dst = ivf_edges(X, threshold, nl, min(nprobe, nl), seed=seed,
                             max_neighbors=max_neighbors, log=log)
        stats = GraphStats("ivf", n, len(src), 0.0, nlist=nl, nprobe=min(nprobe, nl))
    labels = components(n, src, dst)
    stats.seconds = time.monotonic() - t0
    return labels, stats


def dbscan_labels(X: np.ndarray, threshold: float, min_samples: int = 2, n_jobs: int = -1) -> np.ndarray:
    """scikit-learn DBSCAN (the seed's method), eps = 1 - threshold on cosine distance.

    Noise points (-1) become singletons labelled like `components` (own index); clusters are
    relabelled by their first member so the result compares equal to `faiss_graph`'s.
    """
    from sklearn.cluster import DBSCAN

    lab = DBSCAN(eps=1.0 - threshold, min_samples=min_samples, metric="cosine",
                 n_jobs=n_jobs).fit_predict(X)
    return relabel(lab)


def relabel(lab: np.ndarray) -> np.ndarray:
    """Canonical labels: each cluster named by its smallest member index; -1 (noise) -> own index."""
    n = len(lab)
    out = np.arange(n, dtype=np.int64)
    clustered = lab >= 0
    if clustered.any():
        ids = lab[clustered]
        first = np.full(ids.max() + 1, n, np.int64)
        np.minimum.at(first, ids, np.nonzero(clustered)[0])
        out[clustered] = first[ids]
    return out


def shingles(text: str, ngram: int) -> set[bytes]:
    words = text.split()
    if len(words) < ngram:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + ngram]).encode() for i in range(len(words) - ngram + 1)}


def minhash_labels(texts: list[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 3,
                   seed: int = 1) -> np.ndarray:
    """Lexical near-duplicates: datasketch MinHash LSH over word n-gram shingles (Jaccard)."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(shingles(t, ngram)))
        m = LeanMinHash(m)
        hashes.append(m)
        lsh.insert(i, m)
    src, dst = [], []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j != i and m.jaccard(hashes[j]) >= threshold:
                src.append(i)
                dst.append(j)
    return components(len(texts), np.asarray(src, np.int64), np.asarray(dst, np.int64))
