"""generated_solutions: generate-from-seed and the LLM filter of the HLE SFT pipeline (pure: Arrow /
rows in, Arrow out; the sessions are passed in).

1. Problems with a gold answer (`selected_seeds` rows, or CoT / SFT records) are classified `math`
   (a short gold answer math-verify can read, or any CoT record) or `free` (free-form).
2. The generator answers each problem `n` times (`solve_math_problem` / `solve_open_problem`).
3. Each solution's final answer (common.answers.extract_final_answer: '####', \\boxed{}, last number)
   is checked against the gold: math answers with math-verify first; the judgement model
   (`judge_answer`, JSON verdict {"correct", "reason"}) decides free-form answers and math answers
   math-verify cannot read, and with `judge_math` also checks the math answers math-verify decided
   (a disagreement is counted; math-verify's verdict stands).
4. Pass rate per problem = correct / n (n = solutions with a verdict), one row per problem loaded.

A failed generation or an unparseable deciding verdict is a counted failed solution (a reject with
its error and raw text), never a placeholder and never an acceptance."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from resources.llm.tasks import Task
from resources.reasons import Reason

from ..common.accounting import RowIssue
from ..common.answers import answers_match, extract_final_answer
from ..common.language import detect_language
from ..common.pass_rate import pass_rate_table

TEMPLATES = Path(__file__).parent / "templates"

#: a problem with a short (math) gold: the parsed value is the final answer
SOLVE_MATH_PROBLEM = Task.from_file(TEMPLATES / "solve_math_problem.yaml",
                                    parse=lambda text, row: extract_final_answer(text))
#: a free-form problem: the parsed value is the whole answer
SOLVE_OPEN_PROBLEM = Task.from_file(TEMPLATES / "solve_open_problem.yaml", parse=lambda text, row: text.strip())
#: the judgement model's verdict: {"correct": bool, "reason": str} (JSON schema, validated)
JUDGE_ANSWER = Task.from_file(TEMPLATES / "judge_answer.yaml")

ANSWER_KINDS = ("auto", "math", "free")
MATH_GOLD_MAX_CHARS = 40
MATH_GOLD_MAX_WORDS = 4

SOLUTIONS_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("sample", pa.int64()), ("language", pa.string()),
    ("kind", pa.string()),  # math | free
    ("prompt", pa.string()), ("gold_answer", pa.string()), ("solution", pa.string()),
    ("final_answer", pa.string()), ("correct", pa.bool_()),
    ("verifier", pa.string()),  # math_verify | judge: what decided `correct`
    ("math_verify", pa.bool_()),  # math-verify's verdict (null: not applicable)
    ("judge_correct", pa.bool_()), ("judge_reason", pa.string()),  # the judge's verdict (null: not asked)
    ("finish_reason", pa.string()), ("tokens_out", pa.int64()), ("pass_rate", pa.float64()),
    ("generator_model", pa.string()), ("judge_model", pa.string()), ("task", pa.string()),
])

PASS_RATES_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source", pa.string()), ("language", pa.string()), ("kind", pa.string()),
    ("prompt", pa.string()), ("gold_answer", pa.string()),
    ("status", pa.string()),  # ok | no_verdict (judge failed) | all_failed (generation) | no_gold_answer | not_sampled
    ("n_requested", pa.int64()), ("generated", pa.int64()),
    ("n", pa.int64()),  # solutions with a verdict: the pass rate's denominator
    ("correct", pa.int64()), ("pass_rate", pa.float64()),  # null when n = 0
    ("kept", pa.int64()), ("disagreements", pa.int64()),
])


# --------------------------------------------------------------------------- problems

def is_math_answer(gold: str) -> bool:
    """A gold answer math-verify can read and short enough to be a final answer ("72", "\\frac{1}{2}",
    "18 dollars"), not a sentence that happens to contain a number."""
    g = (gold or "").strip()
    if not g or len(g) > MATH_GOLD_MAX_CHARS or len(g.split()) > MATH_GOLD_MAX_WORDS:
        return False
    try:
        from math_verify import parse

        return bool(parse(g))
    except Exception:  # noqa: BLE001 - unreadable = not math
        return False


def _kind(gold: str, answer_kind: str, cot: bool = False) -> str:
    if answer_kind not in ANSWER_KINDS:
        raise ValueError(f"answer_kind must be one of {', '.join(ANSWER_KINDS)}, got {answer_kind!r}")
    if answer_kind != "auto":
        return answer_kind
    return "math" if cot or is_math_answer(gold) else "free"


def _problem(pid, source, prompt, gold, kind) -> dict:
    return {"id": pid, "source": source, "prompt": prompt or "", "gold": (gold or "").strip(), "kind": kind,
            "language": detect_language(prompt)}


def problems_from_seeds(seeds: pa.Table, answer_kind: str = "auto") -> list[dict]:
    """`selected_seeds` rows (all_prompt_id, source, prompt, answer, solution): the gold is `answer`."""
    return [_problem(r["all_prompt_id"], r["source"], r["prompt"], r["answer"], _kind(r["answer"] or "", answer_kind))
            for r in seeds.select(["all_prompt_id", "source", "prompt", "answer"]).to_pylist()]


def problems_from_records(cot: pa.Table, sft: pa.Table, answer_kind: str = "auto") -> list[dict]:
    """CoT records (gold = the final answer, always math in `auto`) then SFT records (gold = the answer)."""
    out = [_problem(r["all_prompt_id"], r["source"], r["prompt"], r["answer"], _kind(r["answer"] or "", answer_kind, True))
           for r in cot.select(["all_prompt_id", "source", "prompt", "answer"]).to_pylist()]
    out += [_problem(r["all_prompt_id"], r["source"], r["prompt"], r["answer"], _kind(r["answer"] or "", answer_kind))
            for r in sft.select(["all_prompt_id", "source", "prompt", "answer"]).to_pylist()]
    return out


def sample_problems(problems: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(sampled, not sampled): a deterministic sample of k problems (all when k = 0), input order kept."""
    if not k or k >= len(problems):
        return problems, []
    keep = set(np.random.default_rng(seed).choice(len(problems), k, replace=False).tolist())
    return ([p for i, p in enumerate(problems) if i in keep], [p for i, p in enumerate(problems) if i not in keep])


# --------------------------------------------------------------------------- generate, verify, judge

@dataclass
class Sample:
    problem: dict
    index: int
    text: Optional[str] = None  # None: the generation failed (error)
    error: str = ""
    finish_reason: str = ""
    tokens_out: int = 0
    final_answer: str = ""
    math_verify: Optional[bool] = None
    judge_correct: Optional[bool] = None
    judge_reason: Optional[str] = None
    judge_error: str = ""  # llm_failed / parse_failed of the judge, with its raw text
    judge_raw: str = ""

    @property
    def generated(self) -> bool:
        return self.text is not None

    @property
    def needs_judge(self) -> bool:
        """The judge decides: free-form answers, and math answers math-verify could not read."""
        return self.generated and self.math_verify is None

    @property
    def verifier(self) -> Optional[str]:
        if not self.generated:
            return None
        return "math_verify" if self.math_verify is not None else "judge"

    @property
    def correct(self) -> Optional[bool]:
        """The verdict; None when there is none (generation or deciding judge failed)."""
        if self.math_verify is not None:
            return self.math_verify
        return self.judge_correct

    @property
    def disagreement(self) -> bool:
        return self.math_verify is not None and self.judge_correct is not None and self.math_verify != self.judge_correct


def math_verdict(answer: str, gold: str) -> Optional[bool]:
    """math-verify's verdict, or None when it cannot read the candidate's answer or the gold (the
    judge decides then)."""
    a, g = (answer or "").strip(), (gold or "").strip()
    if not a or not g:
        return None
    if a == g:
        return True
    try:
        from math_verify import parse

        if not parse(a) or not parse(g):
            return None
    except Exception:  # noqa: BLE001
        return None
    return answers_match(a, g, True)


def generate(problems: list[dict], session, *, n: int, temperature: float, max_tokens: int, seed: int,
             max_input_chars: int) -> list[Sample]:
    """n solutions per problem through the generator session, math answers checked with math-verify."""
    samples: list[Sample] = []
    for task, kind in ((SOLVE_MATH_PROBLEM, "math"), (SOLVE_OPEN_PROBLEM, "free")):
        todo = [p for p in problems if p["kind"] == kind]
        if not todo:
            continue
        rows = [{"question": p["prompt"][:max_input_chars], "language": p["language"]} for p in todo]
        results = session.run(task, rows, n=n, seed=seed, temperature=temperature, max_tokens=max_tokens)
        for p, res in zip(todo, results):
            for s, (value, comp) in enumerate(zip(res.samples, res.completions)):
                if comp is None:  # llm_failed
                    samples.append(Sample(p, s, error=str(value)))
                    continue
                smp = Sample(p, s, text=comp.text, finish_reason=comp.finish_reason, tokens_out=comp.tokens_out)
                smp.final_answer = value if isinstance(value, str) else comp.text.strip()
                if kind == "math":
                    smp.math_verify = math_verdict(smp.final_answer, p["gold"])
                samples.append(smp)
    order = {p["id"]: i for i, p in enumerate(problems)}
    samples.sort(key=lambda x: (order[x.problem["id"]], x.index))
    return samples


def judge_rows(samples: list[Sample], max_chars: int) -> list[dict]:
    return [{"question": x.problem["prompt"][:max_chars], "gold": x.problem["gold"][:max_chars],
             "response": x.text[-max_chars:], "final_answer": x.final_answer[:max_chars],
             "language": x.problem["language"]} for x in samples]


def judge(samples: list[Sample], session, *, max_chars: int, max_tokens: Optional[int] = None) -> None:
    """The judgement model's verdict on each given sample (in place); a failure is recorded with its
    error and raw text."""
    if not samples:
        return
    results = session.run(JUDGE_ANSWER, judge_rows(samples, max_chars), n=1, max_tokens=max_tokens)
    for x, res in zip(samples, results):
        (value,) = res.samples
        if res.ok:
            x.judge_correct, x.judge_reason = bool(value["correct"]), str(value.get("reason", ""))
        else:
            x.judge_error, x.judge_raw = f"{value.reason}: {value.error}", value.raw


def to_judge(samples: list[Sample], judge_math: bool) -> list[Sample]:
    """The samples the judge sees: those it decides, plus (with `judge_math`) the math answers
    math-verify decided, for the disagreement count."""
    return [x for x in samples if x.generated and (x.needs_judge or judge_math)]


# --------------------------------------------------------------------------- tables

@dataclass
class SolutionsResult:
    solutions: pa.Table
    pass_rates: pa.Table
    issues: list[RowIssue]  # per failed / removed solution
    counts: Counter = field(default_factory=Counter)  # the funnel


def assemble(problems: list[dict], samples: list[Sample], *, n: int, keep: str = "correct",
             max_pass_rate: Optional[float] = None, generator_model: str = "", judge_model: str = "",
             skipped: Optional[list[tuple[dict, str]]] = None) -> SolutionsResult:
    """The two tables and the issues. `skipped`: (problem, status) of the problems that were loaded
    but not asked (no_gold_answer, not_sampled): one pass-rate row each, with n = 0."""
    by_problem: dict[str, list[Sample]] = {p["id"]: [] for p in problems}
    for x in samples:
        by_problem[x.problem["id"]].append(x)
    ids = list(by_problem)
    pr = pass_rate_table(ids, [[x.correct for x in by_problem[i]] for i in ids])
    rate = dict(zip(ids, pr["pass_rate"].to_pylist()))
    issues: list[RowIssue] = []
    counts: Counter = Counter(problems=len(problems), requested=len(problems) * n)
    out_rows, kept = [], Counter()
    task_version = {"math": f"{SOLVE_MATH_PROBLEM.name}@{SOLVE_MATH_PROBLEM.version}",
                    "free": f"{SOLVE_OPEN_PROBLEM.name}@{SOLVE_OPEN_PROBLEM.version}"}
    for x in samples:
        p = x.problem
        where = f"{p['id']} sample {x.index}"
        if not x.generated:
            issues.append(RowIssue(reason=Reason.LLM_FAILED, detail=f"{where}: {x.error[:500]}", raw=p["prompt"][:2000]))
            continue
        counts["generated"] += 1
        counts[f"verified_by_{x.verifier}"] += 1
        counts["judge_disagreements"] += x.disagreement
        if x.judge_error:
            counts["judge_failures"] += 1
        if x.correct is None:  # the deciding verdict failed: never an acceptance
            issues.append(RowIssue(reason=Reason.JUDGE_FAILED, detail=f"{where}: {x.judge_error[:500]}",
                                   raw=(x.judge_raw or x.text)[:2000]))
            continue
        counts["verdicts"] += 1
        counts["correct"] += x.correct
        if keep == "correct" and not x.correct:
            issues.append(RowIssue(reason=Reason.INCORRECT, outcome="removed", field="final_answer",
                                   detail=f"{where}: {x.final_answer[:200]!r} vs gold {p['gold'][:200]!r}",
                                   raw=x.text[:2000]))
            continue
        if max_pass_rate is not None and rate[p["id"]] is not None and rate[p["id"]] > max_pass_rate:
            issues.append(RowIssue(reason=Reason.ABOVE_MAX_PASS_RATE, outcome="removed",
                                   detail=f"{where}: pass rate {rate[p['id']]:.3f} > {max_pass_rate}",
                                   raw=x.text[:2000]))
            continue
        kept[p["id"]] += 1
        out_rows.append({
            "all_prompt_id": p["id"], "source": p["source"], "sample": x.index, "language": p["language"],
            "kind": p["kind"], "prompt": p["prompt"], "gold_answer": p["gold"], "solution": x.text,
            "final_answer": x.final_answer, "correct": x.correct, "verifier": x.verifier,
            "math_verify": x.math_verify, "judge_correct": x.judge_correct, "judge_reason": x.judge_reason,
            "finish_reason": x.finish_reason, "tokens_out": x.tokens_out, "pass_rate": rate[p["id"]],
            "generator_model": generator_model, "judge_model": judge_model if x.judge_correct is not None else None,
            "task": task_version[p["kind"]]})
    counts["kept"] = len(out_rows)
    gen = Counter(x.problem["id"] for x in samples if x.generated)
    dis = Counter(x.problem["id"] for x in samples if x.disagreement)
    status = ["ok" if k else (Reason.NO_VERDICT if gen[i] else Reason.ALL_FAILED) for i, k in zip(ids, pr["n"].to_pylist())]
    meta = {p["id"]: p for p in problems}
    rows = [{"all_prompt_id": i, "source": meta[i]["source"], "language": meta[i]["language"], "kind": meta[i]["kind"],
             "prompt": meta[i]["prompt"], "gold_answer": meta[i]["gold"], "status": st, "n_requested": n,
             "generated": gen[i], "n": k, "correct": c, "pass_rate": r,
             "kept": kept[i], "disagreements": dis[i]}
            for i, st, k, c, r in zip(ids, status, pr["n"].to_pylist(), pr["correct"].to_pylist(), pr["pass_rate"].to_pylist())]
    for p, st in skipped or []:
        rows.append({"all_prompt_id": p["id"], "source": p["source"], "language": p["language"], "kind": p["kind"],
                     "prompt": p["prompt"], "gold_answer": p["gold"], "status": st, "n_requested": 0,
                     "generated": 0, "n": 0, "correct": 0, "pass_rate": None,
                     "kept": 0, "disagreements": 0})
    return SolutionsResult(pa.Table.from_pylist(out_rows, schema=SOLUTIONS_SCHEMA),
                           pa.Table.from_pylist(rows, schema=PASS_RATES_SCHEMA), issues, counts)


# --------------------------------------------------------------------------- reports

def pass_rate_histogram(values: list[Optional[float]]) -> list[dict]:
    """Problems per pass-rate bucket: 0, (0, .25], (.25, .5], (.5, .75], (.75, 1), 1, none."""
    buckets = ["0", "(0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1)", "1", "none"]
    c = Counter()
    for v in values:
        if v is None:
            c["none"] += 1
        elif v == 0:
            c["0"] += 1
        elif v == 1:
            c["1"] += 1
        else:
            c[buckets[1 + min(3, int(np.ceil(v * 4)) - 1)]] += 1
    return [{"pass_rate": b, "problems": c[b]} for b in buckets]


def histogram_markdown(hist: list[dict]) -> str:
    peak = max([h["problems"] for h in hist] + [1])
    lines = ["| pass rate | problems | |", "|---|---|---|"]
    lines += [f"| {h['pass_rate']} | {h['problems']} | {'█' * round(20 * h['problems'] / peak)} |" for h in hist]
    return "\n".join(lines)


def funnel_markdown(counts: Counter, rows: list[tuple[str, str]]) -> str:
    lines = ["| step | count |", "|---|---|"] + [f"| {label} | {counts.get(key, 0)} |" for key, label in rows]
    return "\n".join(lines)


FUNNEL = [("problems_loaded", "problems loaded"), ("problems", "problems asked (gold answer, sampled)"),
          ("requested", "solutions requested (problems x n)"), ("generated", "generated"),
          ("verified_by_math_verify", "decided by math-verify"), ("verified_by_judge", "decided by the judge"),
          ("verdicts", "with a verdict"), ("correct", "correct"), ("kept", "kept"),
          ("judge_disagreements", "judge vs math-verify disagreements"), ("judge_failures", "judge failures (unparseable / failed)")]


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve (ties count one half): P(score of a positive > score of a negative)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))
