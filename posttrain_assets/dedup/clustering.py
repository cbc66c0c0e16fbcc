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

Above `ivfpca_min_n` vectors (or `force="ivfpca"`) the same inverted-file join runs on compressed
codes and every candidate pair is re-ranked on the exact vectors (`ivfpca_edges`): each vector x
becomes z = [V^T x, |x - V V^T x|] (its projection on the top `dims` principal directions of a
sample, plus the norm of what the projection leaves out; 129 floats instead of 512). For any two
vectors x . y = (V^T x) . (V^T y) + r_x . r_y <= z_x . z_y (Cauchy-Schwarz on the residuals r),
so the join on z at the same threshold returns a superset of the pairs the flat IVF join would
link: compression loses no pair. Each candidate's cosine is then recomputed on the exact float32
vectors (read in blocks: X may be a memory-mapped array) and only pairs >= threshold are links,
so there are no false links either; the links are exactly those of the flat IVF search with the
same cells (here: k-means on the codes' leading 32 directions, nlist ~ sqrt(n * nprobe)). The
matrix products run on 129-d codes (4x fewer flops than on x), and besides X the search holds 516
bytes per vector.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, Iterator, Optional

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
    dims: int = 0  # ivfpca: principal directions kept (the codes have dims + 1 floats)
    candidates: int = 0  # ivfpca: distinct candidate pairs re-ranked on the exact vectors
    energy: float = 0.0  # ivfpca: mean share of |x|^2 the projection keeps (sample)


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


def _cell_blocks(cells: np.ndarray, nlist: int, V: np.ndarray,
                 progress: Optional[Callable[[int, int], None]] = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The inverted-file join's blocks: for each cell, its members (rows whose nearest cell it is) in
    blocks of BLOCK against its probers (rows with the cell among their nprobe cells), found by
    sorting. Yields (rows, probers, V[rows] @ V[probers].T); `progress(cell, members done)` after
    each cell."""
    nprobe = cells.shape[1]
    home = cells[:, 0]
    m_order = np.argsort(home, kind="stable")
    m_bounds = np.searchsorted(home[m_order], np.arange(nlist + 1))
    flat_cells = cells.ravel()
    p_order = np.argsort(flat_cells, kind="stable")
    p_rows = p_order // nprobe  # == np.repeat(arange(n), nprobe)[p_order]
    p_bounds = np.searchsorted(flat_cells[p_order], np.arange(nlist + 1))
    del flat_cells, p_order
    done = 0
    for c in range(nlist):
        members = m_order[m_bounds[c]:m_bounds[c + 1]]
        if len(members) == 0:
            continue
        probers = p_rows[p_bounds[c]:p_bounds[c + 1]]
        B = V[probers]
        for s in range(0, len(members), BLOCK):
            rows = members[s:s + BLOCK]
            yield rows, probers, V[rows] @ B.T
        done += len(members)
        if progress:
            progress(c, done)


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
    src, dst = [], []

    def progress(c: int, done: int) -> None:
        if log and (c + 1) % max(1, nlist // 10) == 0:
            log(f"ivf search: {done:,}/{n:,} rows ({done / max(time.monotonic() - t0, 1e-9):,.0f} rows/s)")

    for rows, probers, sims in _cell_blocks(cells, nlist, X, progress):
        i, j = _threshold_edges(sims, rows, probers, threshold, max_neighbors)
        src.append(i)
        dst.append(j)
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def pca_codes(X: np.ndarray, dims: int, *, seed: int = 0, train_size: int = 100_000,
              batch: int = 65_536) -> tuple[np.ndarray, np.ndarray, float]:
    """(codes [n, dims + 1] float32, basis [d, dims], mean share of |x|^2 kept): code of x =
    [V^T x, |x - V V^T x|], V the top `dims` eigenvectors of the (uncentred) second moment of a
    sample of rows, so code_x . code_y >= x . y for every pair (and |code_x| = |x|). X is read in
    blocks of `batch` rows (a memory-mapped array stays on disk)."""
    n, d = X.shape
    dims = max(1, min(dims, d))
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if n <= train_size else np.sort(rng.choice(n, train_size, replace=False))
    S = np.asarray(X[rows], np.float64)
    M = S.T @ S
    del S
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits  # (a dependency of scikit-learn)

    with threadpool_limits(1):  # a d x d problem: threaded LAPACK was 20x slower on a busy machine
        _, vecs = eigh(M, subset_by_index=[d - dims, d - 1], driver="evr")
    V = np.ascontiguousarray(vecs[:, ::-1], np.float32)
    Z = np.empty((n, dims + 1), np.float32)
    kept = total = 0.0
    for start in range(0, n, batch):
        xb = np.asarray(X[start:start + batch], np.float32)
        zb = xb @ V
        sq = np.einsum("ij,ij->i", xb, xb)
        zsq = np.einsum("ij,ij->i", zb, zb)
        Z[start:start + len(xb), :dims] = zb
        Z[start:start + len(xb), dims] = np.sqrt(np.maximum(sq - zsq, 0.0))
        kept += float(zsq.sum())
        total += float(sq.sum())
    return Z, V, kept / max(total, 1e-12)


# float32 rounding of the codes: candidates are taken at threshold - BOUND_SLACK so that a pair
# whose exact cosine is >= threshold is never lost to the last bits of the bound
BOUND_SLACK = 1e-4
COARSE_DIMS = 32  # ivfpca: the k-means and the cell assignment use the leading 32 directions


def ivfpca_edges(X: np.ndarray, threshold: float, nlist: int, nprobe: int, *, dims: int = 128,
                 seed: int = 0, train_size: int = 0, niter: int = 6, max_neighbors: int = 0,
                 pca_train_size: int = 100_000, log: Optional[Callable[[str], None]] = None
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The IVF join on PCA + residual-norm codes (a superset of the flat join's pairs), every
    candidate pair re-ranked on the exact vectors of X. Returns unique links (i, j), i != j, each
    pair once, and stats (candidates = distinct pairs re-ranked). `max_neighbors`: at most that
    many links per row and cell block, its strongest."""
    n = len(X)
    t0 = time.monotonic()
    Z, _, energy = pca_codes(X, dims, seed=seed, train_size=pca_train_size)
    if log:
        log(f"ivfpca: {Z.shape[1] - 1}-d codes + residual norm in {time.monotonic() - t0:.1f}s "
            f"(the projection keeps {energy:.1%} of |x|^2)")
    train_size = train_size or max(40 * nlist, 20_000)
    # cells from the leading principal directions only: where a vector lives needs the coarse
    # structure, not every dimension (any assignment keeps the no-false-link guarantee)
    coarse = Z[:, :min(COARSE_DIMS, Z.shape[1] - 1)]
    centroids = _kmeans(coarse, nlist, seed, train_size, niter)
    cells = _top_cells(coarse, centroids, nprobe)
    del coarse
    if log:
        log(f"ivfpca: k-means {nlist} cells + assignment in {time.monotonic() - t0:.1f}s")
    home = np.ascontiguousarray(cells[:, 0])
    cand_t = threshold - BOUND_SLACK
    src, dst = [], []
    candidates = 0

    def progress(c: int, done: int) -> None:
        if log and (c + 1) % max(1, nlist // 10) == 0:
            log(f"ivfpca search: {done:,}/{n:,} rows ({done / max(time.monotonic() - t0, 1e-9):,.0f} rows/s), "
                f"{candidates:,} candidates, {sum(map(len, src)):,} links")

    for rows, probers, products in _cell_blocks(cells, nlist, Z, progress):
        hit = products >= cand_t
        del products
        any_hit = np.flatnonzero(hit.any(axis=1))  # few rows have candidates: nonzero on those
        r, k = np.nonzero(hit[any_hit])
        r = any_hit[r]
        del hit
        gi, gj = rows[r], probers[k]
        # each unordered pair once: a pair also met in gj's home cell (gi probes it) is kept
        # there when gj < gi; pairs of one cell are met twice in the same block
        also = (cells[gi] == home[gj][:, None]).any(axis=1)
        keep = (gi != gj) & ~(also & (gj < gi))
        r, k, gi, gj = r[keep], k[keep], gi[keep], gj[keep]
        if not len(r):
            continue
        candidates += len(r)
        # exact re-rank: the block's rows and the probers met, read once each (rows and
        # probers are in increasing order: sequential reads of a memory-mapped X)
        ur, r_pos = np.unique(r, return_inverse=True)
        uk, k_pos = np.unique(k, return_inverse=True)
        xr = np.asarray(X[rows[ur]], np.float32)
        xk = np.asarray(X[probers[uk]], np.float32)
        sims = np.einsum("ij,ij->i", xr[r_pos], xk[k_pos])
        ok = sims >= threshold
        gi, gj, sims = gi[ok], gj[ok], sims[ok]
        if max_neighbors and len(gi):
            gi, gj = _cap_per_row(gi, gj, sims, max_neighbors)
        src.append(gi)
        dst.append(gj)
    info = {"dims": Z.shape[1] - 1, "candidates": candidates, "energy": energy}
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), info
    return np.concatenate(src), np.concatenate(dst), info


def _top_cells(Z: np.ndarray, centroids: np.ndarray, k: int, block: int = 8192) -> np.ndarray:
    """[n, k] the k cells of largest inner product, best first (blocked matrix products; k
    argmax passes: for the few probes used here, faster than a heap or a partial sort)."""
    n = len(Z)
    cells = np.empty((n, k), np.int64)
    C = np.ascontiguousarray(centroids, np.float32).T
    for start in range(0, n, block):
        S = Z[start:start + block] @ C
        ar = np.arange(len(S))
        for j in range(k):
            a = S.argmax(axis=1)
            cells[start:start + len(S), j] = a
            if j + 1 < k:
                S[ar, a] = -np.inf
    return cells


def _cap_per_row(gi: np.ndarray, gj: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """At most k links per source row (its strongest), as `_threshold_edges` does."""
    order = np.lexsort((-sims, gi))
    gi, gj = gi[order], gj[order]
    starts = np.searchsorted(gi, gi, side="left")
    keep = np.arange(len(gi)) - starts < k
    return gi[keep], gj[keep]


def default_nlist(n: int) -> int:
    """~sqrt(n) cells balances k-means + assignment (n * nlist) against the join (n^2 / nlist)."""
    return int(max(1, min(65536, round(np.sqrt(n)))))


SEARCH_METHODS = ("exact", "ivf", "ivfpca")


def graph_method(n: int, exact_max_n: int = 100_000, ivfpca_min_n: int = 1_000_000, force: str = "") -> str:
    """exact up to exact_max_n vectors, the flat IVF up to ivfpca_min_n, IVF on codes above."""
    if force:
        if force not in SEARCH_METHODS:
            raise ValueError(f"faiss_graph search must be one of {', '.join(SEARCH_METHODS)}, got {force!r}")
        return force
    if n <= exact_max_n:
        return "exact"
    return "ivfpca" if ivfpca_min_n and n > ivfpca_min_n else "ivf"


def faiss_graph(X: np.ndarray, threshold: float, *, exact_max_n: int = 100_000, nlist: int = 0,
                nprobe: int = 3, seed: int = 0, max_neighbors: int = 0, force: str = "",
                ivfpca_min_n: int = 1_000_000, ivfpca_dims: int = 128,
                log: Optional[Callable[[str], None]] = None) -> tuple[np.ndarray, GraphStats]:
    """Component label per vector; exact up to `exact_max_n`, the flat IVF up to `ivfpca_min_n`
    (0 = never switch), IVF on compressed codes + exact re-rank above; `force` picks one
    ('exact', 'ivf', 'ivfpca'). For ivfpca, X may be a read-only memory-mapped float32 array:
    it is read in blocks and never copied whole."""
    n = len(X)
    t0 = time.monotonic()
    mode = graph_method(n, exact_max_n, ivfpca_min_n, force)
    if mode == "ivfpca":
        # cells ~ sqrt(n * nprobe): the assignment (n * nlist products) against the join
        # (n^2 * nprobe / nlist), both on the short codes
        nl = max(1, min(nlist or default_nlist(n * max(1, min(nprobe, n))), n))
        np_ = min(nprobe, nl)
        src, dst, info = ivfpca_edges(X, threshold, nl, np_, dims=ivfpca_dims, seed=seed,
                                      max_neighbors=max_neighbors, log=log)
        labels = components(n, src, dst)
        stats = GraphStats("ivfpca", n, len(src), time.monotonic() - t0, nlist=nl, nprobe=np_,
                           dims=info["dims"], candidates=info["candidates"], energy=info["energy"])
        return labels, stats
    X = np.ascontiguousarray(X, dtype=np.float32)
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
