"""Scoring stage: `difficulty_scores` per source over SFT / CoT records with a gold answer.

- `avg_logprob`: mean log-probability of the gold answer after the prompt under the primary model.
- `ensemble_acc`: share of ensemble answers (models x samples) equal to the gold answer (math
  answers compared with math-verify, others by normalised string).
- `irt_beta`: item difficulty of a one-parameter (Rasch) IRT fit over items x respondents.
- `difficulty_z`: mean of the sign-aligned z-scores (hard = high).
"""

import json
import re
from typing import Optional

import dagster as dg
import numpy as np
import pyarrow as pa

from partitions import source_partitions
from resources.llm import LLMError, LLMResource
from resources.llm_cache import CallStats, LLMCache, cached_calls
from resources.storage import StorageResource

from .accounting import Accounting, RowIssue, rejects_table
from .merging import normalize_text
from .metadata import accounting_check, stage_metadata, unique_check

GROUP = "scoring"

# prompt template (data) and the parse of the model's answer next to it
MATH_TEMPLATE = "{question}\n\nSolve step by step, then give the final answer on the last line as '#### <answer>'."
TEXT_TEMPLATE = "{question}"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_answer(text: str) -> str:
    """The model's final answer: after the last '####', else the last \\boxed{}, else the last number."""
    from .unify import last_boxed

    if "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip().replace(",", "")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    nums = NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else text.strip()


def answers_match(answer: str, gold: str, math: bool) -> bool:
    if not math:
        return normalize_text(answer) == normalize_text(gold) and bool(gold.strip())
    if answer.strip() == gold.strip():
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(gold), parse(answer)))
    except Exception:  # noqa: BLE001 - an unparseable answer is simply wrong
        return False


def rasch_fit(correct: np.ndarray, iters: int = 200, prior_var: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(item difficulty beta, respondent ability theta) of P(correct) = sigmoid(theta - beta).

    Joint MAP with N(0, prior_var) priors (finite values for all-right / all-wrong items), Newton
    steps alternating between items and respondents; NaN entries are missing answers."""
    X = np.asarray(correct, dtype=float)
    seen = ~np.isnan(X)
    X = np.nan_to_num(X)
    n_items, n_resp = X.shape
    beta, theta = np.zeros(n_items), np.zeros(n_resp)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(theta[None, :] - beta[:, None])))
        w = p * (1 - p) * seen
        g_beta = ((p - X) * seen).sum(1) - beta / prior_var
        beta += g_beta / (w.sum(1) + 1 / prior_var)
        p = 1 / (1 + np.exp(-(theta[None, :] - beta[:, None])))
        w = p * (1 - p) * seen
        g_theta = ((X - p) * seen).sum(0) - theta / prior_var
        theta += g_theta / (w.sum(0) + 1 / prior_var)
    return beta, theta


def zscore(x: np.ndarray) -> Optional[np.ndarray]:
    sd = np.nanstd(x)
    if not np.isfinite(sd) or sd == 0:
        return None
    return (x - np.nanmean(x)) / sd


def difficulty_z(avg_logprob: np.ndarray, ensemble_acc: np.ndarray, irt_beta: np.ndarray) -> np.ndarray:
    """Mean of the z-scores aligned so that higher = harder (low logprob, low accuracy, high beta);
    a constant signal (e.g. every answer wrong) carries no information and is left out."""
    parts = [z for z in (zscore(-avg_logprob), zscore(-ensemble_acc), zscore(irt_beta)) if z is not None]
    if not parts:
        return np.zeros(len(avg_logprob))
    return np.nanmean(np.vstack(parts), axis=0)


SCORES_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("avg_logprob", pa.float64()),
    ("gold_tokens", pa.int64()), ("ensemble_acc", pa.float64()), ("n_responses", pa.int64()),
    ("irt_beta", pa.float64()), ("difficulty_z", pa.float64()), ("truncated", pa.bool_()),
    ("score_json", pa.string()),
])


class DifficultyConfig(dg.Config):
    primary: str = "generator"  # the model whose avg_logprob is used
    ensemble: list[str] = ["generator"]  # respondents: every model x `samples` answers
    samples: int = 2
    temperature: float = 0.7
    max_new_tokens: int = 256
    max_items: int = 0  # score at most this many items (a deterministic sample; 0 = all)
    max_input_chars: int = 4000  # OOM guards (the seed's): longer prompts / golds are truncated, counted
    max_gold_chars: int = 2000
    chunk: int = 8  # prompts per committed cache chunk
    seed: int = 0


def gold_items(cot: pa.Table, sft: pa.Table) -> list[dict]:
    """Scorable items: CoT rows (gold = final answer, continuation = the worked solution) and SFT
    rows (gold = continuation = the answer)."""
    items = []
    for r in cot.to_pylist():
        if r["answer"]:
            solution = r["thinking"] + ("\n#### " + r["answer"] if r["split_rule"] == "gsm8k_marker" else "")
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": solution or r["answer"], "math": True})
    for r in sft.to_pylist():
        if r["answer"]:
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": r["answer"], "math": False})
    return items


def sample_items(items: list[dict], k: int, seed: int) -> list[dict]:
    if not k or k >= len(items):
        return items
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(items), k, replace=False).tolist())
    return [items[i] for i in keep]


def _run_guarded(fn, payloads):
    """Call the backend for a chunk; when the chunk fails as a whole, retry item by item so one bad
    item becomes one failed row."""
    try:
        return fn(payloads)
    except Exception:  # noqa: BLE001
        out = []
        for p in payloads:
            try:
                out.extend(fn([p]))
            except Exception as exc:  # noqa: BLE001
                out.append([LLMError(f"{type(exc).__name__}: {exc}")])
        return out


def score_items(items: list[dict], llm: LLMResource, cache: LLMCache, cfg: DifficultyConfig,
                log=None) -> tuple[pa.Table, list[RowIssue], CallStats, int]:
    stats = CallStats()
    truncated = 0
    guarded = []
    for it in items:
        p, c = it["prompt"], it["continuation"]
        cut = len(p) > cfg.max_input_chars or len(c) > cfg.max_gold_chars
        truncated += cut
        guarded.append({**it, "prompt": p[:cfg.max_input_chars], "continuation": c[:cfg.max_gold_chars], "cut": cut})
    # 1) avg log-probability of the gold under the primary model
    primary = llm.backend(cfg.primary)
    lp_payloads = [[primary.chat_prompt([{"role": "user", "content": it["prompt"]}]), it["continuation"]]
                   for it in guarded]
    lp = cached_calls(cache, identity=primary.identity, op="avg_logprob", params={}, payloads=lp_payloads,
                      n=1, seed=0, chunk=cfg.chunk, stats=stats, log=log,
                      run=lambda ps: _lp_run(primary, ps))
    # 2) ensemble answers
    responses: list[list[tuple[str, int, object]]] = [[] for _ in guarded]
    for name in cfg.ensemble:
        be = llm.backend(name)
        msgs = [[{"role": "user", "content": (MATH_TEMPLATE if it["math"] else TEXT_TEMPLATE).format(question=it["prompt"])}]
                for it in guarded]
        params = {"temperature": cfg.temperature, "max_tokens": cfg.max_new_tokens, "template": MATH_TEMPLATE}
        answers = cached_calls(cache, identity=be.identity, op="chat", params=params, payloads=msgs,
                               n=cfg.samples, seed=cfg.seed, chunk=cfg.chunk, stats=stats, log=log,
                               run=lambda ps, be=be: _run_guarded(
                                   lambda q: be.chat(q, n=cfg.samples, seed=cfg.seed, temperature=cfg.temperature,
                                                     max_tokens=cfg.max_new_tokens), ps))
        for i, per in enumerate(answers):
            for s, a in enumerate(per):
                responses[i].append((name, s, a))
    # 3) correctness matrix, IRT, z-scores; failed items -> rejects
    issues, ok = [], []
    for i, it in enumerate(guarded):
        errs = [str(a) for *_, a in responses[i] if isinstance(a, LLMError)]
        lp_val = lp[i][0]
        if isinstance(lp_val, LLMError):
            errs.insert(0, str(lp_val))
        if errs:
            issues.append(RowIssue(reason="llm_failed", detail=f"{it['id']}: {errs[0][:500]}",
                                   raw=it["prompt"][:2000], outcome="rejected"))
        else:
            ok.append(i)
    n_resp = len(cfg.ensemble) * cfg.samples
    M = np.zeros((len(ok), n_resp))
    for row, i in enumerate(ok):
        for col, (_, _, a) in enumerate(responses[i]):
            M[row, col] = answers_match(extract_final_answer(a.text) if guarded[i]["math"] else a.text,
                                        guarded[i]["gold"], guarded[i]["math"])
    avg = np.array([lp[i][0][0] for i in ok], float)
    acc = M.mean(1) if len(ok) else np.zeros(0)
    beta = rasch_fit(M)[0] if len(ok) else np.zeros(0)
    dz = difficulty_z(avg, acc, beta) if len(ok) else np.zeros(0)
    rows = []
    for row, i in enumerate(ok):
        it = guarded[i]
        shape = {"id": it["id"], "prompt": it["prompt"], "gold": it["gold"], "avg_logprob": avg[row],
                 "ensemble_acc": acc[row], "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]),
                 "responses": [{"model": m, "sample": s, "answer": a.text, "correct": bool(M[row, k])}
                               for k, (m, s, a) in enumerate(responses[i])]}
        rows.append({"all_prompt_id": it["id"], "source": it["source"], "avg_logprob": float(avg[row]),
                     "gold_tokens": int(lp[i][0][1]), "ensemble_acc": float(acc[row]), "n_responses": n_resp,
                     "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]), "truncated": it["cut"],
                     "score_json": json.dumps(shape, ensure_ascii=False)})
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), issues, stats, truncated


def _lp_run(backend, payloads):
    def call(q):
        return [[x] for x in backend.avg_logprob([a for a, _ in q], [b for _, b in q])]
    return _run_guarded(call, payloads)


def llm_cache_for(storage: StorageResource, llm: LLMResource) -> LLMCache:
    import os

    if llm.cache_dir:
        return LLMCache(os.path.join(llm.cache_dir, "llm_cache.sqlite"))
    store = storage.store()
    base = os.path.join(store.base, "_llm_cache") if store.is_local else os.path.expanduser("~/.cache/posttrain/llm_cache")
    return LLMCache(os.path.join(base, "llm_cache.sqlite"))


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet", "pytorch"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="difficulty_scores", blocking=True),
                 dg.AssetCheckSpec("all_prompt_id_unique", asset="difficulty_scores")],
    description="avg_logprob, ensemble_acc, irt_beta, difficulty_z per SFT / CoT record with a gold answer.",
    op_tags={"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}},
)
def difficulty_scores(context: dg.AssetExecutionContext, config: DifficultyConfig, llm: LLMResource,
                      storage: StorageResource, cot_records: pa.Table, sft_records: pa.Table):
    key = context.partition_key
    available = gold_items(cot_records, sft_records)
    items = sample_items(available, config.max_items, config.seed)
    cache = llm_cache_for(storage, llm)
    try:
        table, issues, stats, truncated = score_items(items, llm, cache, config, log=context.log.info)
    finally:
        cache.close()
    storage.write_rejects(context.asset_key, key, rejects_table(key, "difficulty_scores", issues))
    acc = Accounting.from_issues(len(items), table.num_rows, issues)
    rate = len(issues) / max(len(items), 1)
    if rate > llm.max_failure_rate:
        raise dg.Failure(description=f"source {key!r}: {len(issues)}/{len(items)} items failed "
                                     f"({rate:.0%} > max_failure_rate {llm.max_failure_rate:.0%}); first: "
                                     f"{issues[0].detail}", allow_retries=True)
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, preview_columns=["all_prompt_id", "avg_logprob", "ensemble_acc", "irt_beta", "difficulty_z"],
        extra={**stats.as_metadata(), "truncated": truncated, "items_available": len(available),
               "ensemble": dg.MetadataValue.json(list(config.ensemble)), "samples": config.samples}))
    yield accounting_check(acc)
    yield unique_check(table, "all_prompt_id")
