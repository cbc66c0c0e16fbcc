"""Selection stage: `selected_seeds` per source — the seeds for synthesis, chosen by

- `length`: the seed's half-Gaussian selection by answer length (bins from quantiles of a sample,
  weights rising toward the longest bin, per-bin reservoir sampling in one pass);
- `pass_rate`: rows whose pass rate (default `ensemble_acc`) is <= a threshold;
- `difficulty`: `difficulty_z` >= a threshold, or the top-k hardest.
"""

import math
from typing import Optional

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partitions import source_partitions

from .accounting import Accounting
from .metadata import accounting_check, stage_metadata

GROUP = "selection"


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


class SelectionConfig(dg.Config):
    method: str = "length"  # length | pass_rate | difficulty
    total_samples: int = 100  # length
    num_bins: int = 6
    curve_sharpness: float = 2.0
    sample_size_for_stats: int = 10_000
    length_unit: str = "chars"  # chars | tokens (tokenizer of `tokenizer`, "" = the embedded SmolLM2)
    tokenizer: str = ""
    seed: int = 42
    shuffle: bool = True
    pass_rate_column: str = "ensemble_acc"  # pass_rate
    max_pass_rate: float = 0.5
    min_difficulty_z: Optional[float] = None  # difficulty: threshold, or
    top_k: int = 0  # the k hardest


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


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="selected_seeds", blocking=True)],
    description="Seeds for synthesis: length (half-Gaussian), pass_rate or difficulty selection.",
)
def selected_seeds(context: dg.AssetExecutionContext, config: SelectionConfig, cot_records: pa.Table,
                   sft_records: pa.Table, difficulty_scores: pa.Table):
    rows = seed_rows(cot_records, sft_records)
    extra: dict = {"method": config.method}
    if config.method == "length":
        lengths = answer_lengths(rows["solution"].to_pylist(), config.length_unit, config.tokenizer)
        idx, report = length_select(lengths, total_samples=config.total_samples, num_bins=config.num_bins,
                                    curve_sharpness=config.curve_sharpness,
                                    sample_size_for_stats=config.sample_size_for_stats, seed=config.seed,
                                    shuffle=config.shuffle)
        out = rows.take(pa.array(idx, pa.int64())).append_column("length", pa.array(lengths[idx]))
        bin_table = ["| bin | length range | available | target | actual |", "|---|---|---|---|---|"]
        bin_table += [f"| {b['bin']} | {b['low']:.0f} – {b['high']:.0f} | {b['available']} | {b['target']} | "
                      f"{b['actual']} |" for b in report["bins"]]
        extra.update(bins=dg.MetadataValue.md("\n".join(bin_table)),
                     length_histogram=dg.MetadataValue.md(histogram_markdown(lengths[idx])),
                     bins_json=dg.MetadataValue.json(report["bins"]))
    else:
        joined = rows.join(difficulty_scores.drop_columns(["source"]), "all_prompt_id", join_type="inner")
        if config.method == "pass_rate":
            mask = pc.less_equal(joined[config.pass_rate_column], config.max_pass_rate)
            out = joined.filter(mask)
        elif config.method == "difficulty":
            if config.top_k:
                out = joined.sort_by([("difficulty_z", "descending")]).slice(0, config.top_k)
            else:
                out = joined.filter(pc.greater_equal(joined["difficulty_z"], config.min_difficulty_z or 0.0))
        else:
            raise dg.Failure(description=f"selection method must be length, pass_rate or difficulty, got {config.method!r}")
        extra["scored_rows"] = joined.num_rows
    acc = Accounting(rows_in=rows.num_rows, rows_out=out.num_rows)
    acc.removed_by_reason["not_selected"] = rows.num_rows - out.num_rows
    yield dg.Output(out, metadata=stage_metadata(out, acc, text_column="prompt",
                                                 preview_columns=["all_prompt_id", "prompt", "answer"], extra=extra))
    yield accounting_check(acc)
