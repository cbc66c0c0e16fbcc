"""Benchmark: faiss_graph (exact and IVF) vs scikit-learn DBSCAN on real prompt embeddings.

    .venv/bin/python -m bench.dedup [--sizes 10000 20000 50000] [--million]
                                    [--backend use_multilingual|sentence_transformers] [--threshold T]

Vectors: the embeddings (default: the multilingual USE, 512-d; `--backend sentence_transformers`:
the bundled all-MiniLM-L6-v2, 384-d) of every distinct real prompt (bundled sources +
../shared/data), their text near-duplicates (case, whitespace, punctuation, two words swapped;
embedded for real), and, to reach each size, jittered copies of real embeddings (unit noise of
norm 0.1-0.6, i.e. cosine 0.86-0.995 to their original: some above, some below the threshold).
Threshold: the model's calibrated dedup default (0.9 for both) unless --threshold.
Printed: wall times, the DBSCAN / faiss_graph ratio and adjusted Rand indices.
"""

import argparse
import random
import re
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from posttrain_assets.dedup.clustering import dbscan_labels, faiss_graph
from resources.embeddings import DEFAULT_BACKEND, EmbeddingClient

from .common import RESULTS, real_prompts, table


def embeddings_for(texts: list[str], client: EmbeddingClient) -> np.ndarray:
    """Embed once per model; cached under bench/results/ (keyed by the model and the texts)."""
    import hashlib

    RESULTS.mkdir(parents=True, exist_ok=True)
    key = hashlib.blake2b(("\x1f".join(texts) + f"|{client.model_name}|{client.lower_all_caps}").encode(),
                          digest_size=8).hexdigest()
    path = RESULTS / f"bench-prompts-{client.backend}-{key}.npy"
    if path.exists():
        return np.load(path)
    X = client.encode(texts)
    np.save(path, X)
    return X


def text_variants(texts: list[str], k: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for t in rng.sample(texts, min(k, len(texts))):
        words = t.split()
        kind = rng.randrange(4)
        if kind == 0:
            out.append(t.upper())
        elif kind == 1:
            out.append("  " + t.replace(" ", "  ") + "\n")
        elif kind == 2:
            out.append(re.sub(r"[.,?!;:]", "", t) + "!")
        elif len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
            out.append(" ".join(words))
    return out


def jittered(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    src = base[rng.integers(0, len(base), n)]
    noise = rng.standard_normal(src.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    v = src + noise * rng.uniform(0.1, 0.6, (n, 1)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def vectors(size: int, base: np.ndarray, seed: int = 0) -> np.ndarray:
    if size <= len(base):
        return base[:size]
    return np.vstack([base, jittered(base, size - len(base), seed)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 20_000, 50_000])
    ap.add_argument("--million", action="store_true", help="also the 1M-vector scaling run")
    ap.add_argument("--variants", type=int, default=3000)
    ap.add_argument("--backend", default=DEFAULT_BACKEND)
    ap.add_argument("--threshold", type=float, default=None)
    args = ap.parse_args()

    client = EmbeddingClient(backend=args.backend)
    threshold = args.threshold if args.threshold is not None else client.dedup_threshold
    texts = real_prompts()
    plant = text_variants(texts, args.variants)
    base = embeddings_for(texts + plant, client)
    print(f"{len(texts):,} distinct real prompts + {len(plant):,} text near-duplicates embedded with "
          f"{client.model_name} ({base.shape[1]}-d); jittered copies fill the rest; threshold {threshold}")
    rows = []
    for n in args.sizes:
        X = vectors(n, base)
        exact, t_exact = timed(lambda: faiss_graph(X, threshold, force="exact")[0])
        (ivf, st), t_ivf = timed(lambda: faiss_graph(X, threshold, force="ivf"))
        db, t_db = timed(lambda: dbscan_labels(X, threshold))
        rows.append([f"{n:,}", f"{t_db:.2f}", f"{t_exact:.2f}", f"{t_ivf:.2f}",
                     f"{t_db / t_exact:.1f}x", f"{t_db / t_ivf:.1f}x",
                     f"{adjusted_rand_score(db, exact):.4f}", f"{adjusted_rand_score(exact, ivf):.4f}",
                     f"{st.nlist}/{st.nprobe}", f"{n - len(np.unique(exact)):,}"])
        print(rows[-1], flush=True)
    print()
    print(table(["vectors", "DBSCAN s", "exact s", "IVF s", "DBSCAN/exact", "DBSCAN/IVF",
                 "ARI exact vs DBSCAN", "ARI IVF vs exact", "nlist/nprobe", "removed"], rows))
    if args.million:
        X = vectors(1_000_000, base, seed=1)
        (lab, st), t = timed(lambda: faiss_graph(X, threshold, log=print))
        sample = np.random.default_rng(2).choice(len(X), 50_000, replace=False)
        print(f"\n1,000,000 vectors: faiss_graph ({st.method}, nlist {st.nlist}, nprobe {st.nprobe}) "
              f"{t:.1f} s, {st.edges:,} edges, {len(X) - len(np.unique(lab)):,} vectors removed")
        # recall on a 50k subsample: pairs the exact search joins there, also joined in the 1M run?
        sub_exact, _ = faiss_graph(X[sample], threshold, force="exact")
        sub_1m = lab[sample]
        first = {}
        joined = total = 0
        for i, c in enumerate(sub_exact.tolist()):
            if c in first:
                total += 1
                joined += sub_1m[i] == sub_1m[first[c]]
            else:
                first[c] = i
        print(f"  50k subsample: {joined}/{total} members of exact clusters also joined in the 1M run "
              f"(recall {joined / max(total, 1):.4f})")


if __name__ == "__main__":
    main()
