"""Difficulty scores: lengths, avg_logprob (gold, question), ensemble accuracy, Rasch IRT, difficulty_z."""

import json
from typing import Optional

import numpy as np
import pyarrow as pa

from resources.llm import LLMError, TaskFailure
from resources.reasons import Reason

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
    """(x - mean) / sd over the finite values; None for a constant (every finite value equal: not
    `sd == 0`, which rounding misses, e.g. sd of [0.7] * 3 = 1e-16) or an all-NaN signal."""
    x = np.asarray(x, dtype=float)
    finite = x[np.isfinite(x)]
    if finite.size == 0 or finite.min() == finite.max():
        return None
    return (x - finite.mean()) / finite.std()


#: the components of `difficulty_z`: +1 = a higher value means a harder item, -1 = an easier one
DIRECTIONS = {"gold_chars": +1, "prompt_chars": +1, "avg_logprob": -1, "prompt_logprob": -1,
              "ensemble_acc": -1, "irt_beta": +1, "label_pass_rate": -1}
#: lengths are z-scored on log(1 + chars) (skewed counts; a 3,000-char solution is not 10x harder)
LOG_SCALED = ("gold_chars", "prompt_chars")
#: `DifficultyConfig.weights`' defaults: the best of a small grid (0, 0.5, 1, 2 per component) on
#: 100 MATH problems against their human level 1-5 (bench/difficulty_dev.py, Spearman; embedded
#: SmolLM2-135M): the reference solution's length (+0.43 alone), the question's length (+0.40) and
#: the gold's avg log-prob (+0.13 alone, but it adds to the lengths) give difficulty_z +0.57
#: (leave-one-out +0.54). The question's own log-prob (-0.15: the wrong way round) and the 135M
#: model's accuracy / Rasch beta (-0.02: no signal) get 0; with a stronger ensemble, give them
#: weight. A dataset's pass-rate label counts when one is configured (`pass_rate_field`).
DEFAULT_WEIGHTS = {"gold_chars": 2.0, "prompt_chars": 1.0, "avg_logprob": 1.0, "prompt_logprob": 0.0,
                   "ensemble_acc": 0.0, "irt_beta": 0.0, "label_pass_rate": 1.0}


def check_weights(weights: dict) -> dict[str, float]:
    unknown = sorted(set(weights) - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"difficulty weights: unknown component(s) {unknown}; known: {sorted(DIRECTIONS)}")
    bad = {k: w for k, w in weights.items() if not (np.isfinite(w) and w >= 0)}
    if bad:
        raise ValueError(f"difficulty weights must be finite and >= 0, got {bad}")
    return {k: float(w) for k, w in weights.items()}


def difficulty_z(avg_logprob: Optional[np.ndarray] = None, ensemble_acc: Optional[np.ndarray] = None,
                 irt_beta: Optional[np.ndarray] = None, *, weights: Optional[dict] = None,
                 **components: np.ndarray) -> np.ndarray:
    """Weighted mean of the components' z-scores, each aligned so that higher = harder (`DIRECTIONS`;
    lengths on a log scale). Components are given by name (`DIRECTIONS`' keys; None = not measured).
    `weights`: {component: weight >= 0}; a component without a weight, or with weight 0, is left
    out; None = every given component with weight 1 (the plain mean of the first version).

    A constant component (e.g. every answer wrong) or one with no finite value carries no
    information and is left out; an item's NaN in one component is left out of that item's mean
    (the other components' weights are renormalised). No component left: all 0; an item with no
    finite value in any kept component: NaN."""
    given = {"avg_logprob": avg_logprob, "ensemble_acc": ensemble_acc, "irt_beta": irt_beta, **components}
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"difficulty_z: unknown component(s) {unknown}")
    w = check_weights(weights) if weights is not None else {k: 1.0 for k in given}
    n = len(next(iter(given.values()))) if given else 0
    num, den = np.zeros(n), np.zeros(n)
    for name, values in given.items():
        if w.get(name, 0.0) <= 0:
            continue
        x = np.asarray(values, dtype=float)
        if name in LOG_SCALED:
            x = np.log1p(np.clip(x, 0, None))
        z = zscore(DIRECTIONS[name] * x)
        if z is None:
            continue
        seen = np.isfinite(z)
        num += np.where(seen, w[name] * z, 0.0)
        den += np.where(seen, w[name], 0.0)
    if not den.any():
        return np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


SCORES_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("avg_logprob", pa.float64()),
    ("gold_tokens", pa.int64()), ("gold_chars", pa.int64()), ("prompt_logprob", pa.float64()),
    ("prompt_tokens", pa.int64()), ("prompt_chars", pa.int64()), ("label_pass_rate", pa.float64()),
    ("ensemble_acc", pa.float64()), ("n_responses", pa.int64()),
    ("irt_beta", pa.float64()), ("difficulty_z", pa.float64()), ("truncated", pa.bool_()),
    ("score_json", pa.string()),
])


def label_pass_rate(metadata: Optional[str], field: str) -> Optional[float]:
    """A dataset's own pass-rate label: `field` of the record's metadata JSON (the source row), a
    number in [0, 1] or a list of per-sample correctness flags (their mean, None entries left out,
    e.g. math_qwen25_cot8_scored's `score`). None when absent or unreadable."""
    if not field or not metadata:
        return None
    try:
        value = json.loads(metadata).get(field)
    except (ValueError, AttributeError):
        return None
    if isinstance(value, list):
        flags = [float(v) for v in value if isinstance(v, (bool, int, float))]
        return sum(flags) / len(flags) if flags else None
    if isinstance(value, str):  # a label written as text: OpenMathReasoning's "0.03125" ("n/a": none)
        from ..common.label_filter import label_value

        value = label_value(value)[0]
    if isinstance(value, (bool, int, float)) and 0 <= float(value) <= 1:
        return float(value)
    return None


def gold_items(cot: pa.Table, sft: pa.Table, pass_rate_field: str = "") -> tuple[list[dict], list[RowIssue]]:
    """Scorable items: CoT rows (gold = final answer, continuation = the worked solution) and SFT
    rows (gold = continuation = the answer), in the prompt's language, with the dataset's pass-rate
    label when `pass_rate_field` names one (`label_pass_rate`); a row without a gold answer is a
    `no_gold_answer` issue (removed)."""
    items, issues = [], []
    for r in cot.to_pylist():
        if r["answer"]:
            solution = r["thinking"] + ("\n#### " + r["answer"] if r["split_rule"] == "gsm8k_marker" else "")
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": solution or r["answer"], "math": True,
                          "language": detect_language(r["prompt"]),
                          "pass_rate": label_pass_rate(r["metadata"], pass_rate_field)})
        else:
            issues.append(RowIssue(reason=Reason.NO_GOLD_ANSWER, outcome="removed", detail=r["all_prompt_id"],
                                   raw=r["prompt"][:2000]))
    for r in sft.to_pylist():
        if r["answer"]:
            items.append({"id": r["all_prompt_id"], "source": r["source"], "prompt": r["prompt"],
                          "gold": r["answer"], "continuation": r["answer"], "math": False,
                          "language": detect_language(r["prompt"]),
                          "pass_rate": label_pass_rate(r["metadata"], pass_rate_field)})
        else:
            issues.append(RowIssue(reason=Reason.NO_GOLD_ANSWER, outcome="removed", detail=r["all_prompt_id"],
                                   raw=r["prompt"][:2000]))
    return items, issues


def user_turn_prefix(session) -> str:
    """The chat template's text before a user message's content (system prompt + user header):
    the context under which `prompt_logprob` scores a question."""
    marker = "\x00QUESTION\x00"
    text = session.chat_prompt([{"role": "user", "content": marker}])
    return text.split(marker)[0] if marker in text and text.split(marker)[0] else "Question:\n"


def sample_items(items: list[dict], k: int, seed: int) -> list[dict]:
    if not k or k >= len(items):
        return items
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(items), k, replace=False).tolist())
    return [items[i] for i in keep]


def score_items(items: list[dict], sessions, cfg) -> tuple[pa.Table, list[RowIssue], int]:
    """`sessions`: a SessionGroup (the primary model and every ensemble member); `cfg`: the fields
    of `DifficultyConfig`. Returns (scores, rejected items, truncated count)."""
    weights = check_weights(cfg.weights)  # a typo in the config fails before any model call
    truncated = 0
    guarded = []
    for it in items:
        p, c = it["prompt"], it["continuation"]
        cut = len(p) > cfg.max_input_chars or len(c) > cfg.max_gold_chars
        truncated += cut
        guarded.append({**it, "prompt": p[:cfg.max_input_chars], "continuation": c[:cfg.max_gold_chars], "cut": cut,
                        "prompt_chars": len(p), "gold_chars": len(c)})  # lengths before the guard
    # 1) avg log-probability of the gold under the primary model
    primary = sessions.get(cfg.primary)
    lp = primary.avg_logprob([primary.chat_prompt([{"role": "user", "content": it["prompt"]}]) for it in guarded],
                             [it["continuation"] for it in guarded])
    # 1b) avg log-probability of the question itself, after the chat template's user-turn header
    #     (the model's system prompt, no other context): how unusual the question reads to the model
    plp = primary.avg_logprob([user_turn_prefix(primary)] * len(guarded), [it["prompt"] for it in guarded])
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
        for answer in (plp[i], lp[i]):
            if isinstance(answer, LLMError):
                errs.insert(0, str(answer))
        if errs:
            issues.append(RowIssue(reason=Reason.LLM_FAILED, detail=f"{it['id']}: {errs[0][:500]}",
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
    plp_ok = np.array([plp[i][0] for i in ok], float)
    pass_rate = np.array([np.nan if guarded[i].get("pass_rate") is None else guarded[i]["pass_rate"] for i in ok], float)
    gold_chars = np.array([guarded[i]["gold_chars"] for i in ok], float)
    prompt_chars = np.array([guarded[i]["prompt_chars"] for i in ok], float)
    dz = difficulty_z(avg, acc, beta, gold_chars=gold_chars, prompt_chars=prompt_chars, prompt_logprob=plp_ok,
                      label_pass_rate=pass_rate, weights=weights) if len(ok) else np.zeros(0)
    rows = []
    for row, i in enumerate(ok):
        it = guarded[i]
        shape = {"id": it["id"], "prompt": it["prompt"], "gold": it["gold"], "avg_logprob": avg[row],
                 "ensemble_acc": acc[row], "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]),
                 "responses": [{"model": m, "sample": s, "answer": c.text, "correct": bool(M[row, k])}
                               for k, (m, s, _, c) in enumerate(responses[i])]}
        rows.append({"all_prompt_id": it["id"], "source": it["source"], "avg_logprob": float(avg[row]),
                     "gold_tokens": int(lp[i][1]), "gold_chars": it["gold_chars"],
                     "prompt_logprob": float(plp_ok[row]), "prompt_tokens": int(plp[i][1]),
                     "prompt_chars": it["prompt_chars"], "label_pass_rate": it.get("pass_rate"),
                     "ensemble_acc": float(acc[row]), "n_responses": n_resp,
                     "irt_beta": float(beta[row]), "difficulty_z": float(dz[row]), "truncated": it["cut"],
                     "score_json": json.dumps(shape, ensure_ascii=False)})
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), issues, truncated
