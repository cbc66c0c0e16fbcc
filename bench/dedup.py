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

    .venv/bin/python -m bench.dedup --pq 1000000 5000000 [--pq-dims 128] [--sizes]

`--pq N ...`: the compressed search (`faiss_graph(force="ivfpca")`) on N synthetic 512-d vectors,
each size in its own process (peak RSS per size): vectors written once to a memory-mapped .npy
under bench/results/ (mixtures of three real embeddings + small noise, 10% of rows replaced by a
near-duplicate of another row, noise of norm 0.1-0.6: cosine 0.86-0.995), then read by the search
from the memory map. Printed: wall time, peak RSS (also its anonymous part, sampled), candidate
pairs, links kept after the exact re-rank, recall of the planted pairs whose exact cosine is >=
the threshold, and recall on 200 random rows against a brute-force search over all N.
"""

import argparse
import json
from pathlib import Path
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


def synthetic_file(n: int, base: np.ndarray, seed: int = 0, dup_share: float = 0.1,
                   batch: int = 50_000) -> tuple[Path, Path]:
    """(vectors .npy, planted pairs .npz) under bench/results/, made once per (n, seed, base).

    Each row: a mixture of three real embeddings (weight 1 and two of 0.3-0.8) plus isotropic
    noise of norm 0.1, unit-normalised (so rows sharing a dominant prompt sit at cosine ~0.6-0.8,
    like prompts of one topic); then `dup_share` of each batch's rows become near-duplicates of
    another row of the batch: normalise(v + t u), u a random unit vector, t uniform 0.1-0.6
    (cosine 0.86-0.995; some originals get several)."""
    import hashlib

    RESULTS.mkdir(parents=True, exist_ok=True)
    key = hashlib.blake2b(base.tobytes() + f"v2|{n}|{seed}|{dup_share}".encode(), digest_size=6).hexdigest()
    path, planted = RESULTS / f"pq-vectors-{n}-{key}.npy", RESULTS / f"pq-planted-{n}-{key}.npz"
    if path.exists() and planted.exists():
        return path, planted
    d = base.shape[1]
    rng = np.random.default_rng(seed)
    X = np.lib.format.open_memmap(RESULTS / f"pq-vectors-{n}-{key}.tmp.npy", mode="w+", dtype=np.float32,
                                  shape=(n, d))
    dup_rows, orig_rows, cos = [], [], []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        idx = rng.integers(0, len(base), (m, 3))
        w = rng.uniform(0.3, 0.8, (m, 2)).astype(np.float32)
        v = base[idx[:, 0]]
        v += w[:, :1] * base[idx[:, 1]]
        v += w[:, 1:] * base[idx[:, 2]]
        noise = rng.standard_normal((m, d), dtype=np.float32)
        noise *= 0.1 / np.linalg.norm(noise, axis=1, keepdims=True)
        v += noise
        del noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        k = int(m * dup_share)
        pos = rng.choice(m, 2 * k, replace=False)
        dups, origs = pos[:k], pos[k:][rng.integers(0, k, k)]
        u = rng.standard_normal((k, d), dtype=np.float32)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        dv = v[origs] + u * rng.uniform(0.1, 0.6, (k, 1)).astype(np.float32)
        dv /= np.linalg.norm(dv, axis=1, keepdims=True)
        v[dups] = dv
        dup_rows.append(dups + start)
        orig_rows.append(origs + start)
        cos.append(np.einsum("ij,ij->i", v[dups], v[origs]))
        X[start:start + m] = v
    X.flush()
    del X
    np.savez(planted, dup=np.concatenate(dup_rows), orig=np.concatenate(orig_rows), cos=np.concatenate(cos))
    (RESULTS / f"pq-vectors-{n}-{key}.tmp.npy").rename(path)
    return path, planted


class PeakMemory:
    """Samples this process's RssAnon and RssFile (/proc/self/status) every 0.2 s."""

    def __init__(self):
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.anon = max(self.anon, int(line.split()[1]) * 1024)
                elif line.startswith("RssFile:"):
                    self.file = max(self.file, int(line.split()[1]) * 1024)
            self._stop.wait(0.2)

    def stop(self):
        self._stop.set()
        self._t.join()


def pq_run(path: Path, planted: Path, threshold: float, dims: int, nprobe: int, queries: int = 200) -> dict:
    """One size: faiss_graph(force='ivfpca') on the memory-mapped vectors, then recall checks."""
    import resource

    X = np.load(path, mmap_mode="r")
    n = len(X)
    import os

    mem = PeakMemory()
    t0, c0 = time.perf_counter(), time.process_time()
    lab, st = faiss_graph(X, threshold, force="ivfpca", ivfpca_dims=dims, nprobe=nprobe,
                          log=lambda m: print(f"  [{time.perf_counter() - t0:6.1f}s] {m}", flush=True))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[1]  # 5-minute load average of the machine (2 cores) at the end
    mem.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # recall of the planted near-duplicates whose exact cosine is >= threshold (same cluster)
    p = np.load(planted)
    above = p["cos"] >= threshold
    planted_recall = float(np.mean(lab[p["dup"][above]] == lab[p["orig"][above]]))
    # every exact neighbour (>= threshold) of random rows, by brute force over all n
    q = np.sort(np.random.default_rng(3).choice(n, queries, replace=False))
    Q = np.asarray(X[q], np.float32)
    hit = tot = 0
    for start in range(0, n, 250_000):
        S = np.asarray(X[start:start + 250_000], np.float32) @ Q.T
        r, c = np.nonzero(S >= threshold)
        r += start
        keep = r != q[c]
        tot += int(keep.sum())
        hit += int((lab[r[keep]] == lab[q[c[keep]]]).sum())
    return {"n": n, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "load5": round(load, 1), "peak_rss_gb": round(peak_rss / 1e9, 2),
            "peak_anon_gb": round(mem.anon / 1e9, 2), "peak_file_gb": round(mem.file / 1e9, 2),
            "nlist": st.nlist, "nprobe": st.nprobe, "dims": st.dims, "energy": round(st.energy, 3),
            "candidates": st.candidates, "links": st.edges, "removed": int(n - len(np.unique(lab))),
            "planted_above": int(above.sum()), "planted_recall": round(planted_recall, 4),
            "query_links": tot, "query_recall": round(hit / max(tot, 1), 4)}


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
    ap.add_argument("--pq", type=int, nargs="*", default=None,
                    help="sizes for the compressed search (ivfpca) on synthetic vectors, e.g. 1000000 5000000")
    ap.add_argument("--pq-dims", type=int, default=128)
    ap.add_argument("--pq-nprobe", type=int, default=3)
    ap.add_argument("--pq-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pq_child:  # one size in its own process: peak RSS per size
        res = pq_run(Path(args.pq_child[0]), Path(args.pq_child[1]), args.threshold, args.pq_dims, args.pq_nprobe)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if args.pq is not None:
        pq_main(args)
        return

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


def pq_main(args) -> None:
    import subprocess
    import sys

    client = EmbeddingClient(backend=args.backend)
    threshold = args.threshold if args.threshold is not None else client.dedup_threshold
    texts = real_prompts()
    base = embeddings_for(texts + text_variants(texts, args.variants), client)
    rows = []
    for n in args.pq:
        t = time.perf_counter()
        path, planted = synthetic_file(n, base)
        print(f"{n:,} synthetic vectors in {path.name} ({time.perf_counter() - t:.0f}s to make or find)", flush=True)
        child = subprocess.Popen([sys.executable, "-m", "bench.dedup", "--pq-child", str(path), str(planted),
                                  "--threshold", str(threshold), "--pq-dims", str(args.pq_dims),
                                  "--pq-nprobe", str(args.pq_nprobe)], stdout=subprocess.PIPE, text=True)
        lines = []
        for line in child.stdout:  # streamed: a long run shows its progress
            print(line, end="", flush=True)
            lines.append(line)
        if child.wait():
            raise SystemExit(f"the {n:,}-vector run failed (exit {child.returncode})")
        r = json.loads([x for x in lines if x.startswith("RESULT ")][-1][7:])
        rows.append([f"{n:,}", f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}", f"{r['load5']:.1f}", f"{r['peak_rss_gb']:.1f}", f"{r['peak_anon_gb']:.1f}",
                     f"{r['nlist']}/{r['nprobe']}", f"{r['dims']} ({r['energy']:.0%})", f"{r['candidates']:,}",
                     f"{r['links']:,}", f"{r['removed']:,}", f"{r['planted_recall']:.4f} of {r['planted_above']:,}",
                     f"{r['query_recall']:.4f} of {r['query_links']:,}"])
        with open(RESULTS / "dedup_pq.jsonl", "a") as f:
            f.write(json.dumps({**r, "threshold": threshold, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    print()
    print(table(["vectors", "wall s", "CPU s", "load (5 min)", "peak RSS GB", "peak anon GB", "nlist/nprobe", "dims (energy)",
                 "candidates", "links kept", "removed", "planted recall", "200-row recall"], rows))


if __name__ == "__main__":
    main()
