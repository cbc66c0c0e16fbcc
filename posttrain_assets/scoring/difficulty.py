"""Difficulty scores: avg_logprob, ensemble accuracy, Rasch IRT, difficulty_z."""

import json
from typing import Optional

import numpy as np
import pyarrow as pa

from resources.llm import LLMError, TaskFailure

from ..common.accounting import RowIssue
from ..common.answers import answers_match
from ..common.language import detect_language
from .tasks import ANSWER, SOLVE_MATH


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


def gold_items(cot: pa.Table, sft: pa.Table) -> tuple[list[dict], list[RowIssue]]:
    """Scorable items: CoT rows (gold = final answer, continuation = the worked solution) and SFT
    rows (gold = continuation = the answer), in the prompt's language; a row without a gold answer
    is a `no_gold_answer` issue (removed)."""
    items, issues = [], []
    for r in cot.to_pylist():
        if r["answer"]:
            solution = r["thinking"] + ("\n#### " + r["answer"] if r["split_rule"] == "gsm8k_marker" else "")
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": solution or r["answer"], "math": True,
                          "language": detect_language(r["prompt"])})
        else:
            issues.append(RowIssue(reason="no_gold_answer", outcome="removed", detail=r["all_prompt_id"],
                                   raw=r["prompt"][:2000]))
    for r in sft.to_pylist():
        if r["answer"]:
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": r["answer"], "math": False,
                          "language": detect_language(r["prompt"])})
        else:
            issues.append(RowIssue(reason="no_gold_answer", outcome="removed", detail=r["all_prompt_id"],
                                   raw=r["prompt"][:2000]))
    return items, issues


def sample_items(items: list[dict], k: int, seed: int) -> list[dict]:
    if not k or k >= len(items):
        return items
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(items), k, replace=False).tolist())
    return [items[i] for i in keep]


def score_items(items: list[dict], sessions, cfg) -> tuple[pa.Table, list[RowIssue], int]:
    """`sessions`: a SessionGroup (the primary model and every ensemble member); `cfg`: the fields
    of `DifficultyConfig`. Returns (scores, rejected items, truncated count)."""
    truncated = 0
    guarded = []
    for it in items:
        p, c = it["prompt"], it["continuation"]
        cut = len(p) > cfg.max_input_chars or len(c) > cfg.max_gold_chars
        truncated += cut
        guarded.append({**it, "prompt": p[:cfg.max_input_chars], "continuation": c[:cfg.max_gold_chars], "cut": cut})
    # 1) avg log-probability of the gold under the primary model
    primary = sessions.get(cfg.primary)
    lp = primary.avg_logprob([primary.chat_prompt([{"role": "user", "content": it["prompt"]}]) for it in guarded],
                             [it["continuation"] for it in guarded])
    # 2) ensemble answers: every model x `samples`, through the solve / answer tasks
    responses: list[list[tuple[str, int, object, object]]] = [[] for _ in guarded]
    for name in cfg.ensemble:
        session = sessions.get(name)
        for task, math in ((SOLVE_MATH, True), (ANSWER, False)):
            idx = [i for i, it in enumerate(guarded) if it["math"] == math]
            if not idx:
                continue
            rows = [{"question": guarded[i]["prompt"], "language": guarded[i].get("language") or "en"} for i in idx]
            results = session.run(task, rows, n=cfg.samples, seed=cfg.seed, temperature=cfg.temperature,
                                  max_tokens=cfg.max_new_tokens)
            for i, res in zip(idx, results):
                for s, (value, completion) in enumerate(zip(res.samples, res.completions)):
                    responses[i].append((name, s, value, completion))
    # 3) correctness matrix, IRT, z-scores; failed items -> rejects
    issues, ok = [], []
    for i, it in enumerate(guarded):
        errs = [str(v) for _, _, v, _ in responses[i] if isinstance(v, TaskFailure)]
        if isinstance(lp[i], LLMError):
            errs.insert(0, str(lp[i]))
        if errs:
            issues.append(RowIssue(reason="llm_failed", detail=f"{it['id']}: {errs[0][:500]}",
                                   raw=it["prompt"][:2000], outcome="rejected"))
        else:
            ok.append(i)
    n_resp = len(cfg.ensemble) * cfg.samples
    M = np.zeros((len(ok), n_resp))
    for row, i in enumerate(ok):
        for col, (_, _, value, _) in enumerate(responses[i]):
            M[row, col] = answers_match(value, guarded[i]["gold"], guarded[i]["math"])
    avg = np.array([lp[i][0] for i in ok], float)
    acc = M.mean(1) if len(ok) else np.zeros(0)
    beta = rasch_fit(M)[0] if len(ok) else np.zeros(0)
    dz = difficulty_z(avg, acc, beta) if len(ok) else np.zeros(0)
    rows = []
    for row, i in enumerate(ok):
        it = guarded[i]
        shape = {"id": it["id"], "prompt": it["prompt"], "gold": it["gold"], "avg_logprob": avg[row],
                 "ensemble_acc": acc[row], "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]),
                 "responses": [{"model": m, "sample": s, "answer": c.text, "correct": bool(M[row, k])}
                               for k, (m, s, _, c) in enumerate(responses[i])]}
        rows.append({"all_prompt_id": it["id"], "source": it["source"], "avg_logprob": float(avg[row]),
                     "gold_tokens": int(lp[i][1]), "ensemble_acc": float(acc[row]), "n_responses": n_resp,
                     "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]), "truncated": it["cut"],
                     "score_json": json.dumps(shape, ensure_ascii=False)})
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), issues, truncated
