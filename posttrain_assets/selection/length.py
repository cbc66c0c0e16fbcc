"""Length half-Gaussian selection (the seed's selector) and the seed table builder."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def bin_edges(sample_lengths: np.ndarray, num_bins: int) -> np.ndarray:
    """Inner edges from quantiles of a sample; the outer bins are open-ended."""
    qs = np.quantile(sample_lengths, np.linspace(0, 1, num_bins + 1)[1:-1]) if len(sample_lengths) else []
    return np.asarray(qs, dtype=float)


def bin_targets(total: int, num_bins: int, curve_sharpness: float) -> list[int]:
    """Half-Gaussian weights peaking at the longest bin: w_i = exp(-s * ((B-1-i)/(B-1))^2);
    targets sum to `total` exactly (largest remainders)."""
    if num_bins == 1:
        return [total]
    w = np.array([math.exp(-curve_sharpness * ((num_bins - 1 - i) / (num_bins - 1)) ** 2) for i in range(num_bins)])
    raw = total * w / w.sum()
    base = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - base), kind="stable")[: total - base.sum()]:
        base[i] += 1
    return base.tolist()


def length_select(lengths: np.ndarray, *, total_samples: int, num_bins: int = 6, curve_sharpness: float = 2.0,
                  sample_size_for_stats: int = 10_000, seed: int = 42, shuffle: bool = True) -> tuple[np.ndarray, dict]:
    """Indices of the selected rows and the per-bin report. Vectorised: bin lookup for all rows at
    once, then per bin a uniform sample without replacement of `target` rows (the distribution
    per-bin reservoir sampling in a streaming pass produces)."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    targets = bin_targets(total_samples, num_bins, curve_sharpness)
    if n == 0:
        return np.zeros(0, np.int64), {"bins": [{"bin": b, "low": -math.inf if b == 0 else math.nan,
                                                 "high": math.inf if b == num_bins - 1 else math.nan,
                                                 "available": 0, "target": t, "actual": 0}
                                                for b, t in enumerate(targets)]}
    stats_idx = rng.choice(n, min(n, sample_size_for_stats), replace=False) if n else np.zeros(0, int)
    edges = bin_edges(lengths[stats_idx], num_bins)
    bins = np.searchsorted(edges, lengths, side="right")
    chosen, available = [], []
    for b, t in enumerate(targets):  # per bin: a uniform sample of `target` rows (what reservoir sampling keeps)
        members = np.flatnonzero(bins == b)
        available.append(len(members))
        k = min(t, len(members))
        chosen.append(np.sort(members[rng.choice(len(members), size=k, replace=False)]) if k else members[:0])
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    picked = rng.permutation(picked) if shuffle else np.sort(picked)
    lows = [-math.inf] + edges.tolist()
    highs = edges.tolist() + [math.inf]
    report = {"bins": [{"bin": b, "low": lows[b], "high": highs[b], "available": int(available[b]),
                        "target": targets[b], "actual": int(len(chosen[b]))} for b in range(num_bins)]}
    return picked, report


def seed_loop_reference(lengths, *, total_samples, num_bins=6, curve_sharpness=2.0, sample_size_for_stats=10_000,
                        seed=42):
    """A straightforward pure-Python re-implementation of the seed's streaming loop (for the
    benchmark): quantile edges from a sample, then per-row bin lookup + Algorithm R reservoirs."""
    import bisect
    import random

    rnd = random.Random(seed)
    sample = sorted(rnd.sample(list(lengths), min(len(lengths), sample_size_for_stats)))
    edges = [sample[int(len(sample) * q / num_bins)] for q in range(1, num_bins)]
    targets = bin_targets(total_samples, num_bins, curve_sharpness)
    reservoirs = [[] for _ in range(num_bins)]
    seen = [0] * num_bins
    for i, length in enumerate(lengths):
        b = bisect.bisect_right(edges, length)
        seen[b] += 1
        if len(reservoirs[b]) < targets[b]:
            reservoirs[b].append(i)
        else:
            j = rnd.randrange(seen[b])
            if j < targets[b]:
                reservoirs[b][j] = i
    return [i for r in reservoirs for i in r]


def histogram_markdown(lengths: np.ndarray, bins: int = 10) -> str:
    if len(lengths) == 0:
        return "_(no rows)_"
    counts, edges = np.histogram(lengths, bins=bins)
    peak = max(counts.max(), 1)
    lines = ["| length | rows | |", "|---|---|---|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"| {lo:.0f}-{hi:.0f} | {c} | {'█' * int(round(20 * c / peak))} |")
    return "\n".join(lines)


SEED_COLUMNS = ["all_prompt_id", "source", "prompt", "answer", "solution"]


def seed_rows(cot: pa.Table, sft: pa.Table) -> pa.Table:
    """Candidate seeds: CoT and SFT records with `solution` = the whole answer text (CoT: reasoning
    and final answer; SFT: the answer), whose length the `length` method measures."""
    parts = []
    if cot.num_rows:
        sol = pc.binary_join_element_wise(cot["thinking"], cot["answer"], "\n")
        parts.append(pa.table({"all_prompt_id": cot["all_prompt_id"], "source": cot["source"],
                               "prompt": cot["prompt"], "answer": cot["answer"], "solution": sol}))
    if sft.num_rows:
        parts.append(pa.table({"all_prompt_id": sft["all_prompt_id"], "source": sft["source"],
                               "prompt": sft["prompt"], "answer": sft["answer"], "solution": sft["answer"]}))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in SEED_COLUMNS})
    return pa.concat_tables(parts)


def answer_lengths(answers: list[str], unit: str, tokenizer: str) -> np.ndarray:
    if unit == "chars":
        return np.array([len(a or "") for a in answers], dtype=float)
    from transformers import AutoTokenizer

    from resources.llm import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(tokenizer or embedded_model_dir())
    return np.array([len(x) for x in tok(list(a or "" for a in answers), add_special_tokens=False)["input_ids"]], float)
