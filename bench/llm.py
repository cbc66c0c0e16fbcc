"""Benchmark: the LLM client and seed selection.

    .venv/bin/python -m bench.llm [--prompts 16] [--max-new-tokens 64] [--difficulty-items 60]

1. embedded generation tokens/s through `LLMResource` vs a bare `model.generate` at the same batch
   size (8, greedy, left padding, the same chat-templated GSM8K questions);
2. a cached re-run vs the first run of the same requests through `cached_calls`;
3. `length_select` over 1M rows vs a straightforward pure-Python re-implementation of the seed's
   streaming loop (`seed_loop_reference`);
4. Spearman correlation between `difficulty_z` and the number of solution steps of GSM8K items.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--difficulty-items", type=int, default=60)
    args = ap.parse_args()
    import torch

    from resources.llm import LLMResource, ModelSpec
    from resources.llm_cache import CallStats, LLMCache, cached_calls

    rows = gsm_rows(max(args.prompts, 1))
    msgs = [[{"role": "user", "content": r["question"]}] for r in rows[:args.prompts]]
    be = LLMResource(models={"g": ModelSpec(batch_size=8)}).backend("g")
    be.chat(msgs[:8], max_tokens=4)  # warm-up
    t0 = time.perf_counter()
    ours = be.chat(msgs, max_tokens=args.max_new_tokens)
    t_ours = time.perf_counter() - t0
    tok_ours = sum(c.tokens_out for per in ours for c in per)

    tok, model = be.tok, be.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    t0 = time.perf_counter()
    tok_bare = 0
    for i in range(0, len(texts), 8):
        enc = tok(texts[i:i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tok_bare += int((new != tok.pad_token_id).sum())
    t_bare = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        cache = LLMCache(f"{tmp}/c.sqlite")
        first, again = CallStats(), CallStats()
        t0 = time.perf_counter()
        cached_calls(cache, identity=be.identity, op="chat", params={"max_tokens": args.max_new_tokens},
                     payloads=msgs, n=1, seed=0, run=lambda ps: be.chat(ps, max_tokens=args.max_new_tokens),
                     stats=first)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached_calls(cache, identity=be.identity, op="chat", params={"max_tokens": args.max_new_tokens},
                     payloads=msgs, n=1, seed=0, run=lambda ps: be.chat(ps, max_tokens=args.max_new_tokens),
                     stats=again)
        t_again = time.perf_counter() - t0
        assert again.calls == 0

    from posttrain_assets.selection import length_select, seed_loop_reference

    rng = np.random.default_rng(0)
    lengths = rng.lognormal(6, 0.6, 1_000_000).round()
    t0 = time.perf_counter()
    idx, _ = length_select(lengths, total_samples=10_000, seed=1)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = seed_loop_reference(lengths.tolist(), total_samples=10_000, seed=1)
    t_ref = time.perf_counter() - t0

    print(table(["measure", "ours", "reference", "ratio"], [
        [f"embedded generation, {args.prompts} GSM8K prompts, batch 8, {args.max_new_tokens} new tokens",
         f"{tok_ours / t_ours:.1f} tok/s", f"{tok_bare / t_bare:.1f} tok/s (bare generate)", f"{(tok_ours / t_ours) / (tok_bare / t_bare):.2f}x"],
        [f"same {args.prompts} requests again through the cache", f"{t_again * 1000:.1f} ms",
         f"{t_first:.1f} s (first run)", f"{t_first / max(t_again, 1e-9):.0f}x"],
        ["length selection over 1,000,000 rows (10,000 picked)", f"{t_fast:.2f} s", f"{t_ref:.2f} s (Python loop)",
         f"{t_ref / t_fast:.1f}x"],
    ]))
    assert len(idx) == len(ref) == 10_000

    if args.difficulty_items:
        from scipy.stats import spearmanr

        from posttrain_assets.scoring import DifficultyConfig, score_items

        items = []
        for i, r in enumerate(gsm_rows(args.difficulty_items)):
            body, final = r["answer"].rsplit("####", 1)
            items.append({"id": str(i), "source": "gsm8k", "prompt": r["question"], "gold": final.strip().replace(",", ""),
                          "continuation": r["answer"], "math": True, "steps": len(body.strip().splitlines())})
        with tempfile.TemporaryDirectory() as tmp:
            res, issues, stats, _ = score_items(items, LLMResource(), LLMCache(f"{tmp}/d.sqlite"),
                                                DifficultyConfig(samples=1, max_new_tokens=96))
        z = res["difficulty_z"].to_numpy()
        steps = np.array([items[int(i)]["steps"] for i in res["all_prompt_id"].to_pylist()])
        lp = res["avg_logprob"].to_numpy()
        rho, p = spearmanr(z, steps)
        print(f"\ndifficulty_z vs GSM8K solution steps over {len(z)} train items: Spearman rho = {rho:.3f} "
              f"(p = {p:.3g}); avg_logprob vs steps rho = {spearmanr(-lp, steps)[0]:.3f}; "
              f"ensemble_acc mean {res['ensemble_acc'].to_numpy().mean():.3f}; failures {len(issues)}")


if __name__ == "__main__":
    main()
