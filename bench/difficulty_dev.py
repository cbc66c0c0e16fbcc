"""Benchmark: how well `difficulty_scores` and its components track human difficulty (not a test).

    .venv/bin/python -m bench.difficulty_dev [--samples 1] [--max-new-tokens 128] [--fresh]

Dev set: ../shared/data/math_qwen25_cot8_scored/math_cot_100.jsonl (read from ../shared, never
copied into the repo: it is evaluation data): 100 MATH problems with their human level 1-5, the
reference worked solution and 8 scored Qwen2.5-Math-Instruct samples (strong-model pass rate).

Runs the stage's own code: the problems become CoT records (`split_reasoning`, as `cot_records`
does), `gold_items` picks the items, `score_items` scores them with a real session of the default
`LLMResource` (the embedded SmolLM2-135M, model "generator"). Prints, for every component, its
Spearman correlation (sign-aligned: + = agrees with "harder") with the level and with the strong
model's failure rate (1 - pass rate), then `difficulty_z` with the default weights (in-sample and
cross-validated: the weight grid below chosen on the other items only), the old equal-weight
definition, and the length baseline. Results: bench/results/difficulty_dev.json.

The model answers are cached under bench/results/difficulty_dev_cache/ (a re-run makes no model
call; --fresh uses a temporary cache).
"""

import argparse
import itertools
import json
import tempfile
import time

import numpy as np
from scipy.stats import rankdata, spearmanr

from .common import RESULTS, SHARED, table

DEV = SHARED / "math_qwen25_cot8_scored" / "math_cot_100.jsonl"
#: the weights the grid tries per component (the CV picks among these on the training items)
GRID = (0.0, 0.5, 1.0, 2.0)


def load_dev() -> list[dict]:
    if not DEV.exists():
        raise SystemExit(f"dev set not found: {DEV}")
    return [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]


def dev_records(rows: list[dict]):
    """The dev problems as `cot_records` rows (metadata = the source row's labels, as ingest keeps it)."""
    import pyarrow as pa

    from posttrain_assets.records.unify import COT_SCHEMA, split_reasoning

    out = []
    for r in rows:
        thinking, answer, rule = split_reasoning(r["solution"], r["answer"])
        out.append({"all_prompt_id": f"math:{r['idx']}", "source_prompt_id": str(r["idx"]), "prompt": r["question"],
                    "thinking": thinking, "answer": answer or r["answer"], "source": "math",
                    "split_rule": rule, "metadata": json.dumps({"level": r["level"], "score": r["score"]})})
    return pa.Table.from_pylist(out, schema=COT_SCHEMA)


def score(rows: list[dict], args) -> tuple:
    """(scores without a pass-rate label = the CPU default, scores with the dev set's label, seconds,
    model calls, failures)."""
    from posttrain_assets.records.unify import SFT_SCHEMA
    from posttrain_assets.scoring.assets import DifficultyConfig
    from posttrain_assets.scoring.difficulty import gold_items, score_items
    from resources.llm import LLMResource

    cot = dev_records(rows)
    cfg = DifficultyConfig(samples=args.samples, max_new_tokens=args.max_new_tokens, max_input_chars=4000,
                           max_gold_chars=2000)  # the full-size guards (the auto defaults resolve in the asset)
    tmp = tempfile.TemporaryDirectory() if args.fresh else None
    cache_dir = tmp.name if tmp else str(RESULTS / "difficulty_dev_cache")
    llm = LLMResource(cache_dir=cache_dir)
    out = {}
    t0 = time.perf_counter()
    try:
        with llm.sessions(names=[cfg.primary, *cfg.ensemble], chunk=cfg.chunk) as sessions:
            for label, field in (("default", ""), ("with_label", "score")):
                items, no_gold = gold_items(cot, SFT_SCHEMA.empty_table(), pass_rate_field=field)
                assert not no_gold, no_gold
                out[label] = score_items(items, sessions, cfg)
            md = sessions.metadata()
    finally:
        llm.close()
        if tmp:
            tmp.cleanup()
    return out["default"], out["with_label"], time.perf_counter() - t0, md


def rho(x, y) -> tuple[float, float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0:
        return float("nan"), float("nan"), int(keep.sum())
    r, p = spearmanr(x[keep], y[keep])
    return float(r), float(p), int(keep.sum())


def col_spearman(S: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman of every column of S with y (average ranks for ties)."""
    R = rankdata(S, axis=0)
    R = R - R.mean(0)
    ry = rankdata(y) - rankdata(y).mean()
    den = np.sqrt((R ** 2).sum(0) * (ry ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (R * ry[:, None]).sum(0) / np.where(den > 0, den, 1), np.nan)


def aligned_z(components: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each non-constant component z-scored as difficulty_z does (direction, log lengths)."""
    from posttrain_assets.scoring.difficulty import DIRECTIONS, LOG_SCALED, zscore

    out = {}
    for name, x in components.items():
        x = np.log1p(np.clip(x, 0, None)) if name in LOG_SCALED else np.asarray(x, float)
        z = zscore(DIRECTIONS[name] * x)
        if z is not None:
            out[name] = z
    return out


def grid_search(Z: np.ndarray, y: np.ndarray, W: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The grid weights with the best in-sample Spearman on the `train` rows (first best on ties:
    the grid is ordered so that smaller weights come first)."""
    S = Z[train] @ W.T / W.sum(1)
    r = col_spearman(S, y[train])
    return W[int(np.nanargmax(r))]


def cross_validate(Z: np.ndarray, y: np.ndarray, W: np.ndarray, folds: list[np.ndarray]) -> tuple[float, list]:
    """Out-of-fold scores (weights picked on the other items; the z-scores are the unsupervised
    per-partition transform of the stage, over all items) -> pooled Spearman with y, per-fold picks."""
    oof = np.full(len(y), np.nan)
    picks = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        w = grid_search(Z, y, W, train)
        picks.append(w.tolist())
        oof[test] = Z[test] @ w / w.sum()
    return rho(oof, y)[0], picks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1, help="ensemble samples per problem (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--fresh", action="store_true", help="a temporary LLM cache instead of bench/results/")
    args = ap.parse_args()

    from posttrain_assets.scoring.difficulty import DEFAULT_WEIGHTS, difficulty_z

    rows = load_dev()
    level = {f"math:{r['idx']}": int(r["level"].split()[-1]) for r in rows}
    strong_fail = {f"math:{r['idx']}": 1 - float(np.mean(r["score"])) for r in rows}
    (t_def, issues, truncated), (t_lab, issues_lab, _), seconds, md = score(rows, args)
    ids = t_def["all_prompt_id"].to_pylist()
    assert ids == t_lab["all_prompt_id"].to_pylist()
    y = np.array([level[i] for i in ids], float)
    fail = np.array([strong_fail[i] for i in ids], float)
    col = {c: t_lab[c].to_numpy(zero_copy_only=False).astype(float) for c in
           ("gold_chars", "gold_tokens", "prompt_chars", "prompt_tokens", "avg_logprob", "prompt_logprob",
            "ensemble_acc", "irt_beta", "label_pass_rate")}

    # per component: Spearman, aligned so that + = "harder" agrees with the label
    from posttrain_assets.scoring.difficulty import DIRECTIONS

    directions = {**DIRECTIONS, "gold_tokens": +1, "prompt_tokens": +1}
    descr = {"gold_chars": "length of the reference solution (chars) = the length baseline",
             "gold_tokens": "length of the reference solution (model tokens)",
             "prompt_chars": "length of the question (chars)",
             "prompt_tokens": "length of the question (model tokens)",
             "avg_logprob": "-avg log-prob of the reference solution after the question",
             "prompt_logprob": "-avg log-prob of the question after the user-turn header",
             "ensemble_acc": f"-share of the 135M model's {args.samples} sample(s) right "
                             f"(mean {np.nanmean(col['ensemble_acc']):.2f})",
             "irt_beta": "Rasch item difficulty over those samples",
             "label_pass_rate": "-strong-model pass rate (Qwen2.5-Math, 8 samples; the dataset's label)"}
    results: dict = {"dev_set": str(DEV.relative_to(SHARED.parent.parent)), "n_items": len(ids),
                     "rejected": len(issues), "truncated": truncated, "samples": args.samples,
                     "max_new_tokens": args.max_new_tokens, "seconds": round(seconds, 1),
                     "llm_calls": md.get("llm_calls"), "llm_cache_hits": md.get("llm_cache_hits"),
                     "llm_model": md.get("llm_model"), "components": {}}
    body = []
    for name, x in col.items():
        x_al = directions[name] * x
        r_l, p_l, n = rho(x_al, y)
        r_f, p_f, _ = rho(x_al, fail) if name != "label_pass_rate" else (1.0, 0.0, n)
        const = bool(np.nanstd(x) == 0)
        results["components"][name] = {"what": descr[name], "weight": DEFAULT_WEIGHTS.get(name),
                                       "spearman_level": r_l, "p_level": p_l, "n": n,
                                       "spearman_strong_fail": r_f, "p_strong_fail": p_f, "constant": const}
        body.append([name, descr[name], "-" if name not in DEFAULT_WEIGHTS else f"{DEFAULT_WEIGHTS[name]:g}",
                     "constant" if const else f"{r_l:+.3f}", "" if const else f"{p_l:.1g}", n,
                     "constant" if const else f"{r_f:+.3f}"])

    # difficulty_z: the stage's output (default weights), the dev label added, the old plain mean
    dz_default = t_def["difficulty_z"].to_numpy()
    dz_label = t_lab["difficulty_z"].to_numpy()
    dz_old = difficulty_z(col["avg_logprob"], col["ensemble_acc"], col["irt_beta"])  # weights=None: v1
    for name, z, what in (("difficulty_z", dz_default, "the stage's output, default weights (CPU default)"),
                          ("difficulty_z + label", dz_label, "the same with pass_rate_field: score (dev label)"),
                          ("difficulty_z v1", dz_old, "old: plain mean of avg_logprob, ensemble_acc, irt_beta")):
        r_l, p_l, n = rho(z, y)
        r_f, p_f, _ = rho(z, fail)
        results[name.replace(" + ", "_plus_").replace(" ", "_")] = {"what": what, "spearman_level": r_l, "p_level": p_l,
                                                                    "n": n, "spearman_strong_fail": r_f}
        body.append([name, what, "", f"{r_l:+.3f}", f"{p_l:.1g}", n, f"{r_f:+.3f}"])

    # weight choice: a grid over the non-constant model-free / model components (the label aside),
    # in-sample and cross-validated (LOO and 5-fold, weights picked on the other items)
    cand = {k: col[k] for k in ("gold_chars", "prompt_chars", "avg_logprob", "prompt_logprob", "ensemble_acc", "irt_beta")}
    Zd = aligned_z(cand)
    names = list(Zd)
    Z = np.vstack([Zd[k] for k in names]).T
    W = np.array([w for w in itertools.product(GRID, repeat=len(names)) if sum(w) > 0])
    W = W[np.argsort(W.sum(1), kind="stable")]
    S = Z @ W.T / W.sum(1)
    r_all = col_spearman(S, y)
    best = W[int(np.nanargmax(r_all))]
    dflt = np.array([DEFAULT_WEIGHTS.get(k, 0.0) for k in names])
    dflt_in = rho(Z @ dflt / dflt.sum(), y)[0]
    assert abs(dflt_in - rho(dz_default, y)[0]) < 1e-9, "grid scores must equal the stage's difficulty_z"
    loo, _ = cross_validate(Z, y, W, [np.array([i]) for i in range(len(y))])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    cv5, picks5 = cross_validate(Z, y, W, [perm[k::5] for k in range(5)])
    top = np.argsort(-np.nan_to_num(r_all, nan=-9))[:8]
    results["weights"] = {"components_in_grid": names, "grid": list(GRID), "default": dict(DEFAULT_WEIGHTS),
                          "default_in_sample": dflt_in, "best_in_sample": dict(zip(names, best.tolist())),
                          "best_in_sample_spearman": float(np.nanmax(r_all)),
                          "equal_weights_in_sample": rho(Z @ np.ones(len(names)), y)[0],
                          "top": [{"weights": dict(zip(names, W[i].tolist())), "spearman": float(r_all[i])} for i in top],
                          "cv_loo_spearman": loo, "cv_5fold_spearman": cv5, "cv_5fold_picks": picks5}
    length = rho(col["gold_chars"], y)
    results["length_baseline"] = {"spearman_level": length[0], "p_level": length[1], "n": length[2]}
    # item bootstrap: how sure is "difficulty_z beats the length baseline" on 100 items?
    boot = np.array([[rho(dz_default[b], y[b])[0], rho(col["gold_chars"][b], y[b])[0]]
                     for b in (rng.integers(0, len(y), len(y)) for _ in range(2000))])
    ci = lambda v: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]  # noqa: E731
    results["bootstrap"] = {"resamples": 2000, "difficulty_z_ci95": ci(boot[:, 0]), "length_ci95": ci(boot[:, 1]),
                            "difference_ci95": ci(boot[:, 0] - boot[:, 1]),
                            "share_difficulty_z_above_length": float(np.mean(boot[:, 0] > boot[:, 1]))}

    print(f"dev set: {DEV} ({len(ids)} scored, {len(issues)} rejected, {truncated} truncated); "
          f"{results['llm_model']}; ensemble {args.samples} sample(s) x {args.max_new_tokens} tokens; "
          f"{results['llm_calls']} model calls, {results['llm_cache_hits']} cache hits, {seconds:.0f} s")
    print("Spearman (+ = the signal, sign-aligned to 'harder', agrees) with the MATH level (1-5) and with the strong "
          "model's failure rate (1 - pass rate over 8 Qwen2.5-Math samples):\n")
    print(table(["signal", "what", "weight", "rho level", "p", "n", "rho strong-fail"], body))
    print(f"\nlength baseline (gold_chars alone): {length[0]:+.3f}")
    print(f"difficulty_z, default weights {dict((k, v) for k, v in DEFAULT_WEIGHTS.items())}: in-sample {dflt_in:+.3f}")
    print(f"weight grid {GRID} over {names}: best in-sample {np.nanmax(r_all):+.3f} at {dict(zip(names, best.tolist()))}; "
          f"equal weights {results['weights']['equal_weights_in_sample']:+.3f}")
    print(f"cross-validated (weights picked by the grid on the other items): LOO {loo:+.3f}, 5-fold {cv5:+.3f} "
          f"(5-fold picks: {picks5})")
    b = results["bootstrap"]
    print(f"item bootstrap (2000): difficulty_z 95% CI [{b['difficulty_z_ci95'][0]:+.2f}, {b['difficulty_z_ci95'][1]:+.2f}], "
          f"length [{b['length_ci95'][0]:+.2f}, {b['length_ci95'][1]:+.2f}], difference "
          f"[{b['difference_ci95'][0]:+.2f}, {b['difference_ci95'][1]:+.2f}]; difficulty_z above length in "
          f"{b['share_difficulty_z_above_length']:.0%} of resamples")
    print("top grid weightings (in-sample): " + "; ".join(
        f"{[f'{w:g}' for w in W[i]]} {r_all[i]:+.3f}" for i in top))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "difficulty_dev.json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten: {RESULTS / 'difficulty_dev.json'}")


if __name__ == "__main__":
    main()
