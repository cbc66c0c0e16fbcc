"""Benchmark: the LLM layer and seed selection.

    .venv/bin/python -m bench.llm [--prompts 16] [--max-new-tokens 64] [--difficulty-items 60]

1. generation tokens/s of the embedded engine (CTranslate2 int8) vs the `transformers` backend
   (fp32) on the same weights, the same chat-templated GSM8K questions, greedy, in one run: at
   batch 8 (`batch_invariant: false`, length-sorted batches) and per request (the default,
   `batch_invariant: true`);
2. agreement of `avg_logprob` between the two (int8 vs fp32): mean absolute difference per token of
   the gold GSM8K solutions' log-probabilities, and of the per-item means;
3. the session (cache, accounting) vs the bare engine, and a cached re-run vs the first run;
4. `length_select` over 1M rows vs the seed's streaming loop (`seed_loop_reference`);
5. Spearman correlation between `difficulty_z` and the number of solution steps of GSM8K items.
"""

import argparse
import json
import tempfile
import time

import numpy as np

from .common import SHARED, table


def gsm_rows(n: int):
    path = SHARED / "gsm8k/train.jsonl"
    if not path.exists():
        from .common import REPO

        path = REPO / "posttrain_assets/sample_data/gsm8k/train_300.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return rows[:n] if n else rows


def tokens_per_s(backend, msgs, d) -> tuple[float, int]:
    backend.chat(msgs[:2], d.__class__(max_tokens=4))  # warm-up
    t0 = time.perf_counter()
    out = backend.chat(msgs, d)
    dt = time.perf_counter() - t0
    n = sum(c.tokens_out for per in out for c in per)
    return n / dt, n


def per_token_logprobs(embedded, tf, prompts, conts):
    """Per-token log-probabilities of each continuation under both engines (same tokenisation)."""
    import torch

    diffs, mean_diffs = [], []
    for p, c in zip(prompts, conts):
        p_ids = tf.tok(p, add_special_tokens=False)["input_ids"]
        seq = p_ids + tf.tok(c, add_special_tokens=False)["input_ids"]
        ct2 = np.array(embedded.gen.score_batch([tf.tok.convert_ids_to_tokens(seq)])[0].log_probs)[len(p_ids) - 1:]
        with torch.no_grad():
            logits = tf.model(input_ids=torch.tensor([seq])).logits[0].float()
        lp = torch.log_softmax(logits, -1)[len(p_ids) - 1:len(seq) - 1].gather(1, torch.tensor(seq[len(p_ids):])[:, None])
        ref = lp.squeeze(1).numpy()
        diffs.append(np.abs(ct2 - ref))
        mean_diffs.append(abs(ct2.mean() - ref.mean()))
    return float(np.concatenate(diffs).mean()), float(np.mean(mean_diffs)), int(sum(len(d) for d in diffs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--difficulty-items", type=int, default=60)
    args = ap.parse_args()

    from resources.llm import Decoding, LLMCache, LLMResource, ModelSpec, embedded_model_dir

    rows = gsm_rows(max(args.prompts, 1))
    msgs = [[{"role": "user", "content": r["question"]}] for r in rows[:args.prompts]]
    d = Decoding(max_tokens=args.max_new_tokens)
    folder = embedded_model_dir()
    res = LLMResource(models={
        "ct2_b8": ModelSpec(batch_size=8, batch_invariant=False),
        "tf_b8": ModelSpec(backend="transformers", model=folder, batch_size=8, batch_invariant=False),
        "ct2": ModelSpec(), "tf": ModelSpec(backend="transformers", model=folder)})
    ct2_b8, n1 = tokens_per_s(res.backend("ct2_b8"), msgs, d)
    tf_b8, n2 = tokens_per_s(res.backend("tf_b8"), msgs, d)
    ct2_1, _ = tokens_per_s(res.backend("ct2"), msgs, d)
    tf_1, _ = tokens_per_s(res.backend("tf"), msgs, d)

    emb, tf = res.backend("ct2"), res.backend("tf")
    prompts = [emb.chat_prompt(m) for m in msgs]
    tok_mad, item_mad, n_tok = per_token_logprobs(emb, tf, prompts, [r["answer"] for r in rows[:args.prompts]])

    with tempfile.TemporaryDirectory() as tmp:
        s = res.session(name="ct2", cache=LLMCache(f"{tmp}/c.sqlite"))
        t0 = time.perf_counter()
        s.chat(msgs, max_tokens=args.max_new_tokens)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        s.chat(msgs, max_tokens=args.max_new_tokens)
        t_again = time.perf_counter() - t0
        assert s.stats.cache_hits == len(msgs)
        t0 = time.perf_counter()
        emb.chat(msgs, d)
        t_bare = time.perf_counter() - t0

    from posttrain_assets.selection.length import length_select, seed_loop_reference

    rng = np.random.default_rng(0)
    lengths = rng.lognormal(6, 0.6, 1_000_000).round()
    t0 = time.perf_counter()
    idx, _ = length_select(lengths, total_samples=10_000, seed=1)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = seed_loop_reference(lengths.tolist(), total_samples=10_000, seed=1)
    t_ref = time.perf_counter() - t0

    g = f"{args.prompts} GSM8K prompts, greedy, {args.max_new_tokens} new tokens"
    print(table(["measure", "embedded (CTranslate2 int8)", "transformers (fp32)", "ratio"], [
        [f"generation at batch 8 (batch_invariant: false), {g}", f"{ct2_b8:.1f} tok/s", f"{tf_b8:.1f} tok/s",
         f"{ct2_b8 / tf_b8:.2f}x"],
        [f"generation per request (batch_invariant: true, default), {g}", f"{ct2_1:.1f} tok/s", f"{tf_1:.1f} tok/s",
         f"{ct2_1 / tf_1:.2f}x"],
        [f"avg_logprob of {args.prompts} gold solutions ({n_tok} tokens): mean |int8 - fp32| per token",
         f"{tok_mad:.4f} nats", "(reference)", f"per-item mean: {item_mad:.4f} nats"],
    ]))
    print()
    print(table(["measure", "ours", "reference", "ratio"], [
        [f"{args.prompts} requests through a session (cache, stats) vs the bare engine", f"{t_first:.2f} s",
         f"{t_bare:.2f} s (bare backend)", f"{t_bare / t_first:.2f}x"],
        [f"the same {args.prompts} requests again through the cache", f"{t_again * 1000:.1f} ms",
         f"{t_first:.1f} s (first run)", f"{t_first / max(t_again, 1e-9):.0f}x"],
        ["length selection over 1,000,000 rows (10,000 picked)", f"{t_fast:.2f} s", f"{t_ref:.2f} s (Python loop)",
         f"{t_ref / t_fast:.1f}x"],
    ]))
    assert len(idx) == len(ref) == 10_000
    res.close()

    if args.difficulty_items:
        from scipy.stats import spearmanr

        from posttrain_assets.scoring.assets import DifficultyConfig
        from posttrain_assets.scoring.difficulty import score_items

        items = []
        for i, r in enumerate(gsm_rows(args.difficulty_items)):
            body, final = r["answer"].rsplit("####", 1)
            items.append({"id": str(i), "source": "gsm8k", "prompt": r["question"], "gold": final.strip().replace(",", ""),
                          "continuation": r["answer"], "math": True, "steps": len(body.strip().splitlines())})
        with tempfile.TemporaryDirectory() as tmp:
            llm = LLMResource(cache_dir=tmp)
            with llm.sessions(names=["generator"]) as sessions:
                cfg = DifficultyConfig(samples=1, max_new_tokens=96, max_input_chars=4000, max_gold_chars=2000)
                out, issues, _ = score_items(items, sessions, cfg)
        z = out["difficulty_z"].to_numpy()
        steps = np.array([items[int(i)]["steps"] for i in out["all_prompt_id"].to_pylist()])
        lp = out["avg_logprob"].to_numpy()
        rho, p = spearmanr(z, steps)
        print(f"\ndifficulty_z vs GSM8K solution steps over {len(z)} train items: Spearman rho = {rho:.3f} "
              f"(p = {p:.3g}); avg_logprob vs steps rho = {spearmanr(-lp, steps)[0]:.3f}; "
              f"ensemble_acc mean {out['ensemble_acc'].to_numpy().mean():.3f}; failures {len(issues)}")


if __name__ == "__main__":
    main()
