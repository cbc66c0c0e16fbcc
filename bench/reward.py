"""Benchmark: how far the reward resource's scores agree with references (not a test).

    .venv/bin/python -m bench.reward [--pairs 40] [--backend judge] [--model HUB_ID ...]

1. Human preference: the first `--pairs` rows of HH-RLHF harmless-base (the bundled 300-row test
   slice) as (conversation, chosen) and (conversation, rejected); the share of pairs where chosen
   scores above rejected, with ties and pairs with a failed score (either side) reported apart.
2. ArmoRM: ../shared/data/magpie_sample/example_instructions_5res_armorm.json (magpie-align/magpie:
   5 instructions x 5 Llama-3-8B-Instruct responses, each with an ArmoRM-Llama3-8B-v0.1 score):
   Kendall tau-b between our scores and ArmoRM's per instruction, and the mean over instructions
   (an instruction whose scores are all tied, or with fewer than 2 scored responses, has no tau:
   counted apart).

Default: the CPU default, the judge on the embedded SmolLM2-135M (greedy, the template's 160
tokens). `--backend classifier --model ...` measures a reward model the same way (GPU). Answers are
cached in a fresh temporary folder unless `--cache-dir` is given. Results: bench/results/reward.json.
"""

import argparse
import json
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.helpers import hh_pairs

from .common import RESULTS, SHARED

MAGPIE = SHARED / "magpie_sample" / "example_instructions_5res_armorm.json"


def describe(values) -> dict:
    scores = [v.overall for v in values if v.ok]
    return {"scored": len(scores), "failed": dict(Counter(v.reason for v in values if not v.ok)),
            "errors": dict(Counter(v.error[:70] for v in values if not v.ok).most_common(4)),
            "distinct_overall": len(set(scores)),
            "overall_counts": {str(k): c for k, c in sorted(Counter(scores).items())[:12]}}


def human_preference(reward, llm, storage, n: int) -> dict:
    pairs = hh_pairs(n)
    items = [(p, r) for p, c, rj in pairs for r in (c, rj)]
    t0 = time.perf_counter()
    res = reward.score(None, items, llm=llm, storage=storage)
    seconds = time.perf_counter() - t0
    above = below = ties = failed = 0
    for k in range(len(pairs)):
        c, r = res[2 * k], res[2 * k + 1]
        if not (c.ok and r.ok):
            failed += 1
        elif c.overall > r.overall:
            above += 1
        elif c.overall < r.overall:
            below += 1
        else:
            ties += 1
    both = above + below + ties
    return {"pairs": len(pairs), "chosen_above": above, "chosen_below": below, "ties": ties, "failed_pairs": failed,
            "agreement_all_pairs": round(above / len(pairs), 3) if pairs else None,
            "agreement_scored_pairs": round(above / both, 3) if both else None,
            "agreement_decided_pairs": round(above / (above + below), 3) if above + below else None,
            "responses": describe(res), "seconds": round(seconds, 1),
            "responses_per_s": round(len(items) / seconds, 2) if seconds else None,
            "llm": {k: v for k, v in res.metadata.items() if k.startswith("llm_")}}


def armorm_agreement(reward, llm, storage) -> dict:
    from scipy.stats import kendalltau

    if not MAGPIE.exists():
        return {"skipped": f"{MAGPIE} not present"}
    rows = json.loads(MAGPIE.read_text())
    items, refs = [], []
    for row in rows:
        for resp, rm in zip(row["responses"], row["rewards_armorm"]):
            items.append((row["instruction"], resp))
            refs.append(rm["score"])
    t0 = time.perf_counter()
    res = reward.score(None, items, llm=llm, storage=storage)
    seconds = time.perf_counter() - t0
    per, taus = [], []
    for i, row in enumerate(rows):
        k = len(row["responses"])
        ours = res[i * k:(i + 1) * k]
        ref = refs[i * k:(i + 1) * k]
        kept = [(o.overall, r) for o, r in zip(ours, ref) if o.ok]
        tau = None
        if len(kept) >= 2 and len({o for o, _ in kept}) > 1:
            t = kendalltau([o for o, _ in kept], [r for _, r in kept]).statistic
            tau = None if math.isnan(t) else round(float(t), 3)
        if tau is not None:
            taus.append(tau)
        per.append({"uuid": row["uuid"], "task_category": row.get("task_category"), "scored": len(kept),
                    "ours": [round(o.overall, 3) if o.ok else o.reason for o in ours], "armorm": ref, "tau": tau})
    return {"instructions": len(rows), "responses": len(items), "with_tau": len(taus),
            "no_tau": len(rows) - len(taus), "mean_tau": round(sum(taus) / len(taus), 3) if taus else None,
            "per_instruction": per, "responses_scored": describe(res), "seconds": round(seconds, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=40, help="HH-RLHF pairs (the first N of the bundled slice)")
    ap.add_argument("--backend", default="judge", choices=["judge", "classifier"])
    ap.add_argument("--model", default="", help="classifier: hub id or folder")
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--cache-dir", default="", help="keep the judge's answers here (default: a fresh temp dir)")
    ap.add_argument("--skip-armorm", action="store_true")
    args = ap.parse_args(argv)

    from resources.llm import LLMResource
    from resources.reward import ClassifierReward, JudgeReward, RewardResource
    from resources.storage import StorageResource

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "cache")
        llm = LLMResource(cache_dir=cache)
        storage = StorageResource(root=str(Path(tmp) / "storage"))
        backend = (ClassifierReward(model=args.model, trust_remote_code=args.trust_remote_code,
                                    max_length=args.max_length) if args.backend == "classifier" else JudgeReward())
        reward = RewardResource(backend=backend)
        out = {"backend": args.backend, "model": reward.model_name,
               "human_preference": human_preference(reward, llm, storage, args.pairs)}
        if not args.skip_armorm:
            out["armorm"] = armorm_agreement(reward, llm, storage)
        reward.close()
        llm.close()
    out["model"] = out["human_preference"]["llm"].get("llm_model", out["model"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reward.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    hp = out["human_preference"]
    print(f"model: {out['model']}")
    print(f"HH-RLHF harmless-base, first {hp['pairs']} pairs: chosen > rejected {hp['chosen_above']}, "
          f"< {hp['chosen_below']}, ties {hp['ties']}, failed {hp['failed_pairs']} -> agreement "
          f"{hp['agreement_all_pairs']} of all pairs, {hp['agreement_scored_pairs']} of scored pairs, "
          f"{hp['agreement_decided_pairs']} of decided pairs; responses: {hp['responses']}; "
          f"{hp['seconds']} s ({hp['responses_per_s']} responses/s)")
    if "armorm" in out:
        a = out["armorm"]
        if "skipped" in a:
            print(f"ArmoRM: skipped ({a['skipped']})")
        else:
            print(f"ArmoRM (Magpie sample, {a['instructions']} x 5): mean Kendall tau {a['mean_tau']} over "
                  f"{a['with_tau']} instructions ({a['no_tau']} without a tau: tied or unscored); "
                  f"responses: {a['responses_scored']}; {a['seconds']} s")
            for p in a["per_instruction"]:
                print(f"  {p['uuid'][:8]} {p['task_category']}: ours {p['ours']} armorm "
                      f"{[round(x, 3) for x in p['armorm']]} tau {p['tau']}")
    return out


if __name__ == "__main__":
    main()
