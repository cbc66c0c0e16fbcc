"""preference_pairs: on-policy preference pairs from a prompt table — n candidate responses per prompt,
every one scored by a reward model, best vs worst (pure: Arrow / rows in, Arrow out; the LLM sessions
and the reward scorer are passed in).

1. Prompts (`prompt_items`): any prompt table of the source (`INPUTS`: filtered_instructions,
   magpie_instructions, deduplicated_prompts, selected_seeds, hard_problems, evolved_instructions; their
   columns: the contract in common/inputs.py), normalised to (row id, prompt conversation, language).
   The table's conversation column (deduplicated_prompts' `messages`) keeps a multi-turn prompt whole;
   otherwise the text column is one user turn. The language comes from the language column, else it
   is detected.
2. Candidates (`generate`): per generation setting (an LLMResource model name x a temperature)
   `samples_per_setting` samples of the task `preference_response` (templates/, en + ja; its system
   turn is added when the conversation has none). A greedy setting (temperature 0) asks for one
   sample: more would be copies. Every candidate ends exactly one way:

       llm_failed   the request failed (no text)
       empty        the answer is blank
       truncated    cut at max_tokens (only with `drop_truncated`; otherwise kept and counted)
       duplicate    the same stripped text as an earlier candidate of the prompt (`duplicate_of`)
       unique       scored

3. Scores (`score`): the unique candidates of each prompt that has two or more through the reward scorer (`RewardResource.score` with the
   prompt conversation and the candidate): a score, or a failure with its reason — never a default.
4. The pair (`choose_pair`): chosen = the highest score, rejected = the lowest (among equal scores, the
   earliest candidate in setting order). Per input row, exactly one outcome:

       rejected  missing_id | duplicate_id (field: the id column) | bad_messages (field: messages)
       removed   empty_prompt | prompt_too_long                  (before any model call)
       (not_sampled: outside a `max_prompts` sample; counted, not a reject)
       rejected  llm_failed          fewer than 2 usable candidates, some of them failed to generate
       removed   too_few_candidates  fewer than 2 usable candidates, none failed (blank / identical)
       rejected  reward_failed       2 or more usable candidates, fewer than 2 of them scored
       removed   tie                 best score == worst score
       removed   below_min_margin    0 < best - worst < min_margin
       out       a pair

Rows (`PAIRS_SCHEMA`): the unified preference schema's columns where they fit (all_prompt_id = the
prompt row's id, prompt, chosen, rejected, metadata, source, messages = the prompt conversation as the
input has it, without the task's system turn) + the pair's scores, models, candidate count, every
candidate's outcome and score (`candidate_scores`, JSON) and the lineage (`input_asset`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pyarrow as pa

from resources.llm.tasks import Task
from resources.reasons import Reason

from ..common import asset_names as A
from ..common.accounting import RowIssue
from ..common.inputs import input_table
from ..common.language import detect_language
from ..common.schemas import MESSAGE_TYPE

TEMPLATES = Path(__file__).parent / "templates"
#: one candidate response (the whole answer, stripped)
RESPONSE = Task.from_file(TEMPLATES / "preference_response.yaml", parse=lambda text, row: text.strip())

#: the prompt tables preference_pairs can read (config `input_asset`; their columns: common/inputs.py)
INPUTS = (A.FILTERED_INSTRUCTIONS, A.MAGPIE_INSTRUCTIONS, A.DEDUPLICATED_PROMPTS, A.SELECTED_SEEDS, A.HARD_PROBLEMS,
          A.EVOLVED_INSTRUCTIONS)
ROLES = ("system", "user", "assistant")
#: candidate outcomes, in the funnel's order
CANDIDATE_STATUSES = ("llm_failed", "empty", "truncated", "duplicate", "unique")
#: prompt outcomes that are failures (`rejected`); the other reasons are policy (`removed`)
FAILURE_REASONS = frozenset({Reason.MISSING_ID, Reason.DUPLICATE_ID, Reason.BAD_MESSAGES, Reason.LLM_FAILED, Reason.REWARD_FAILED})
#: reward failures that are failed requests (against llm.max_failure_rate); the others are answers
#: that came back unusable (against the stage's max_reward_failure_rate)
REWARD_REQUEST_FAILURES = frozenset({Reason.LLM_FAILED, Reason.CLASSIFIER_FAILED})

PAIRS_SCHEMA = pa.schema([
    ("id", pa.string()),  # '<all_prompt_id>:pair' (one pair per prompt)
    ("all_prompt_id", pa.string()),  # the prompt row's id in `input_asset` (uuid for Magpie tables)
    ("input_asset", pa.string()),
    ("source", pa.string()),
    ("language", pa.string()),
    ("prompt", pa.string()),  # the last user turn (the whole prompt for single-turn rows)
    ("messages", MESSAGE_TYPE),  # the prompt conversation (multi-turn kept; no assistant answer)
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("chosen_score", pa.float64()),
    ("rejected_score", pa.float64()),
    ("margin", pa.float64()),  # chosen_score - rejected_score (> 0, >= min_margin)
    ("chosen_model", pa.string()),  # backend:model of the session that wrote it
    ("rejected_model", pa.string()),
    ("chosen_temperature", pa.float64()),
    ("rejected_temperature", pa.float64()),
    ("reward_model", pa.string()),
    ("n_candidates", pa.int64()),  # unique candidates (after llm_failed / empty / duplicates)
    ("n_scored", pa.int64()),
    ("candidate_scores", pa.string()),  # JSON: every candidate requested, its outcome and score
    ("metadata", pa.string()),  # JSON: the response task, its system turn, the settings and decoding
])


# --------------------------------------------------------------------------- prompts

def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_messages(value: Any) -> list[dict]:
    """A prompt conversation: {role, content} turns, the last one the user's. Raises ValueError."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of {role, content} turns")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"turn {i}: expected {{role: {'/'.join(ROLES)}, content: str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"the last turn is the {out[-1]['role']}'s, not the user's (nothing to answer)")
    return out


def prompt_items(table: pa.Table, input_asset: str, source: str,
                 max_input_chars: int) -> tuple[list[dict], list[RowIssue]]:
    """The prompts to answer: {id, row, source, prompt, messages, language}, and the rows that end here
    (rejected: no id, a repeated id, a malformed conversation; removed: empty or too long). Raises
    ValueError naming the asset and the missing columns when the table is not a prompt table."""
    spec = input_table(input_asset, INPUTS)
    id_col, text_col, msg_col, lang_col = spec.id, spec.text, spec.messages, spec.language
    cols = table.column_names
    missing = [c for c in (id_col, text_col) if c not in cols]
    if missing:
        raise ValueError(f"{input_asset} has no column {', '.join(missing)} (columns: {', '.join(cols)})")
    has_msgs, has_lang, has_source = msg_col is not None and msg_col in cols, lang_col in cols, "source" in cols
    items, issues, seen = [], [], {}
    for i, r in enumerate(table.to_pylist()):
        rid = r[id_col]
        text = _text(r[text_col])
        if rid is None or not str(rid).strip():
            issues.append(RowIssue(reason=Reason.MISSING_ID, source_row=i, field=id_col,
                                   detail=f"{input_asset} row {i}: no {id_col}", raw=text[:2000]))
            continue
        rid = str(rid)
        if rid in seen:
            issues.append(RowIssue(reason=Reason.DUPLICATE_ID, source_row=i, field=id_col, duplicate_of=rid,
                                   detail=f"{input_asset} row {i}: {id_col} {rid!r} already on row {seen[rid]}",
                                   raw=text[:2000]))
            continue
        seen[rid] = i
        if has_msgs and r[msg_col]:
            try:
                messages = _check_messages(r[msg_col])
            except ValueError as exc:
                issues.append(RowIssue(reason=Reason.BAD_MESSAGES, source_row=i, field=msg_col,
                                       detail=f"{rid}: {exc}", raw=text[:2000]))
                continue
            text = messages[-1]["content"]
        else:
            messages = [{"role": "user", "content": text}]
        if not text.strip():
            issues.append(RowIssue(reason=Reason.EMPTY_PROMPT, outcome="removed", source_row=i, field=text_col,
                                   detail=f"{rid}: blank prompt"))
            continue
        size = sum(len(m["content"]) for m in messages)
        if size > max_input_chars:
            issues.append(RowIssue(reason=Reason.PROMPT_TOO_LONG, outcome="removed", source_row=i, field=text_col,
                                   detail=f"{rid}: {size} > {max_input_chars} chars", raw=text[:2000]))
            continue
        lang = (r.get(lang_col) if has_lang else None) or detect_language(text)
        items.append({"id": rid, "row": i, "source": (r.get("source") if has_source else None) or source,
                      "prompt": text, "messages": messages, "language": lang})
    return items, issues


def conversation(item: dict, task: Task = RESPONSE) -> list[dict]:
    """What the generator is sent: the task's system turn (in the item's language) unless the prompt
    has one, the earlier turns as they are, the last user turn through the task's `user` template.
    For a single-turn prompt this is exactly `task.render({"prompt": ..., "language": ...})`."""
    t = task.templates[task.language_of({"language": item["language"]})]
    *earlier, last = item["messages"]
    msgs = [] if any(m["role"] == "system" for m in item["messages"]) or not t.get("system") else \
        [{"role": "system", "content": t["system"]}]
    return msgs + [dict(m) for m in earlier] + [{"role": "user", "content": t["user"].format(prompt=last["content"])}]


# --------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Setting:
    model: str  # an LLMResource model name
    temperature: float
    n: int  # samples asked for (1 when greedy)


def generation_settings(models: list[str], temperatures: list[float], samples_per_setting: int) -> list[Setting]:
    """models x temperatures, in that order; a greedy temperature gives one sample. Raises ValueError
    naming the field when the settings cannot give two candidates per prompt."""
    if not models or any(not m for m in models):
        raise ValueError(f"models: a non-empty list of LLMResource model names, got {models!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"models: without repeats, got {models!r}")
    if not temperatures or any(t < 0 for t in temperatures):
        raise ValueError(f"temperatures: a non-empty list of values >= 0, got {temperatures!r}")
    if len(set(temperatures)) != len(temperatures):
        raise ValueError(f"temperatures: without repeats, got {temperatures!r}")
    if samples_per_setting < 1:
        raise ValueError(f"samples_per_setting: >= 1, got {samples_per_setting}")
    out = [Setting(m, float(t), 1 if t <= 0 else samples_per_setting) for m in models for t in temperatures]
    if sum(s.n for s in out) < 2:
        raise ValueError(f"models x temperatures x samples_per_setting give {sum(s.n for s in out)} candidate per "
                         "prompt (a greedy temperature gives one sample): a pair needs at least 2")
    return out


@dataclass
class Candidate:
    item_id: str
    index: int  # its position among the prompt's candidates (setting order, then sample)
    model: str  # the LLMResource model name
    model_id: str  # backend:model
    temperature: float
    sample: int
    text: Optional[str] = None  # None: the request failed
    error: str = ""
    finish_reason: str = ""
    tokens_out: int = 0
    status: str = ""  # one of CANDIDATE_STATUSES
    duplicate_of: Optional[int] = None
    score: Optional[float] = None  # the reward's overall score; None: not scored or failed
    aspects: dict = field(default_factory=dict)
    reward_model: str = ""
    reward_failure: str = ""  # the reward failure's reason
    reward_error: str = ""
    sent_to_reward: bool = False  # only the candidates of prompts with >= 2 unique ones are scored

    def as_json(self) -> dict:
        return {"index": self.index, "model": self.model, "model_id": self.model_id, "temperature": self.temperature,
                "sample": self.sample, "status": self.status, "duplicate_of": self.duplicate_of,
                "finish_reason": self.finish_reason or None, "tokens_out": self.tokens_out,
                "chars": None if self.text is None else len(self.text), "score": self.score,
                "aspects": self.aspects or None, "reward_failure": self.reward_failure or None,
                "error": (self.error or self.reward_error)[:300] or None}


def model_id(session) -> str:
    s = session.settings
    return f"{s.get('backend')}:{s.get('model')}"


def generate(items: list[dict], sessions: Mapping[str, Any], settings: list[Setting], *, max_tokens: int,
             seed: int, drop_truncated: bool = False, task: Task = RESPONSE) -> dict[str, list[Candidate]]:
    """Per item id, its candidates in setting order (each with its outcome, see the module docstring).
    `sessions`: model name -> a session-like object with `.chat(conversations, task=, n=, seed=,
    temperature=, max_tokens=)` -> per conversation n answers (`.text`, `.finish_reason`, `.tokens_out`,
    or an exception value) and `.settings` (backend, model)."""
    out: dict[str, list[Candidate]] = {it["id"]: [] for it in items}
    if not items:
        return out
    convs = [conversation(it, task) for it in items]
    for st in settings:
        session = sessions[st.model]
        mid = model_id(session)
        answers = session.chat(convs, task=task, n=st.n, seed=seed, temperature=st.temperature, max_tokens=max_tokens)
        for it, per in zip(items, answers):
            for s, a in enumerate(per):
                c = Candidate(it["id"], len(out[it["id"]]), st.model, mid, st.temperature, s)
                if isinstance(a, BaseException):
                    c.error, c.status = f"{type(a).__name__}: {a}", "llm_failed"
                else:
                    c.text, c.finish_reason, c.tokens_out = task.parse(a.text, it), a.finish_reason, a.tokens_out
                out[it["id"]].append(c)
    for cands in out.values():
        classify(cands, drop_truncated)
    return out


def classify(cands: list[Candidate], drop_truncated: bool = False) -> None:
    """Each generated candidate's outcome (in place): empty, truncated (when dropped), duplicate of an
    earlier unique text, or unique."""
    first: dict[str, int] = {}
    for c in cands:
        if c.text is None:
            c.status = "llm_failed"
        elif not c.text.strip():
            c.status = "empty"
        elif drop_truncated and c.finish_reason == "length":
            c.status = "truncated"
        elif c.text.strip() in first:
            c.status, c.duplicate_of = "duplicate", first[c.text.strip()]
        else:
            c.status = "unique"
            first[c.text.strip()] = c.index


# --------------------------------------------------------------------------- scores

def score(items: list[dict], candidates: dict[str, list[Candidate]],
          score_fn: Callable[[list, list], list]) -> list:
    """The unique candidates of every prompt that has at least two (one alone cannot make a pair)
    through `score_fn(pairs, languages)` (pairs = (prompt conversation, response); per pair a value with
    `.ok`: a score with `.overall`, `.aspects`, `.model`, or a failure with `.reason`, `.error`,
    `.model`). Sets each candidate's score or failure; returns the results."""
    todo = []
    for it in items:
        unique = [c for c in candidates[it["id"]] if c.status == "unique"]
        todo += [(it, c) for c in unique] if len(unique) >= 2 else []
    if not todo:
        return []
    results = score_fn([(it["messages"], c.text) for it, c in todo], [it["language"] for it, _ in todo])
    if len(results) != len(todo):
        raise ValueError(f"the reward scorer returned {len(results)} values for {len(todo)} candidates")
    for (_, c), v in zip(todo, results):
        c.reward_model, c.sent_to_reward = v.model, True
        if v.ok:
            c.score, c.aspects = float(v.overall), dict(v.aspects)
        else:
            c.reward_failure, c.reward_error = v.reason, v.error
    return results


def choose_pair(cands: list[Candidate], min_margin: float) -> tuple[Optional[Candidate], Optional[Candidate], str]:
    """(chosen, rejected, "pair") from the scored candidates, or (None, None, reason): fewer_than_2_scored,
    tie (best == worst), below_min_margin (best - worst < min_margin). Among equal scores the earliest
    candidate is taken, for the chosen and for the rejected."""
    scored = [c for c in cands if c.score is not None]
    if len(scored) < 2:
        return None, None, "fewer_than_2_scored"
    best = max(scored, key=lambda c: c.score)  # max / min return the first of equals
    worst = min(scored, key=lambda c: c.score)
    margin = best.score - worst.score
    if margin == 0:
        return None, None, "tie"
    if margin < min_margin:
        return None, None, "below_min_margin"
    return best, worst, "pair"


# --------------------------------------------------------------------------- the table

@dataclass
class PairsResult:
    table: pa.Table
    issues: list[RowIssue]  # per prompt that gave no pair (after the model calls)
    counts: Counter = field(default_factory=Counter)  # the funnel
    margins: list[tuple[float, bool]] = field(default_factory=list)  # per prompt with >= 2 scores: (margin, kept)


def _status_counts(cands: list[Candidate]) -> str:
    c = Counter(x.status for x in cands)
    return ", ".join(f"{s} {c[s]}" for s in CANDIDATE_STATUSES if c[s])


def assemble(items: list[dict], candidates: dict[str, list[Candidate]], *, min_margin: float, input_asset: str,
             metadata: Optional[dict] = None) -> PairsResult:
    """One pair per item that has one; an issue (with its reason) per item that has none; the funnel."""
    rows, issues = [], []
    counts: Counter = Counter(prompts=len(items))
    margins: list[tuple[float, bool]] = []
    meta_json = json.dumps(metadata or {}, ensure_ascii=False, sort_keys=True)
    for it in items:
        cands = candidates[it["id"]]
        counts["candidates_requested"] += len(cands)
        for c in cands:
            counts[f"candidates_{c.status}"] += 1
            if c.sent_to_reward:
                counts["reward_requested"] += 1
                counts["candidates_scored" if c.score is not None else f"reward_failed_{c.reward_failure}"] += 1
        usable = [c for c in cands if c.status == "unique"]
        scored = [c for c in usable if c.score is not None]

        def issue(reason: str, detail: str) -> None:
            issues.append(RowIssue(reason=reason, outcome="rejected" if reason in FAILURE_REASONS else "removed",
                                   source_row=it["row"], detail=f"{it['id']}: {detail}", raw=it["prompt"][:2000]))

        if len(usable) < 2:
            failed = [c for c in cands if c.status == "llm_failed"]
            why = f"{len(usable)} usable of {len(cands)} candidates ({_status_counts(cands)})"
            issue(Reason.LLM_FAILED if failed else Reason.TOO_FEW_CANDIDATES,
                  why + (f"; first error: {failed[0].error[:300]}" if failed else ""))
            continue
        counts["prompts_with_2_candidates"] += 1
        if len(scored) < 2:
            fails = Counter(c.reward_failure for c in usable if c.score is None)
            first = next(c for c in usable if c.score is None)
            issue(Reason.REWARD_FAILED, f"{len(scored)} of {len(usable)} candidates scored (reward "
                                   + ", ".join(f"{k} {v}" for k, v in sorted(fails.items()))
                                   + f"); first: {first.reward_failure}: {first.reward_error[:300]}")
            continue
        counts["prompts_with_2_scored"] += 1
        chosen, rejected, outcome = choose_pair(usable, min_margin)
        best, worst = max(c.score for c in scored), min(c.score for c in scored)
        margins.append((best - worst, outcome == "pair"))
        if outcome != "pair":
            counts[outcome] += 1
            issue(outcome, f"best {best:g}, worst {worst:g} over {len(scored)} scored candidates"
                  + (f" (margin {best - worst:g} < min_margin {min_margin:g})" if outcome == "below_min_margin" else ""))
            continue
        counts["pairs"] += 1
        rows.append({
            "id": f"{it['id']}:pair", "all_prompt_id": it["id"], "input_asset": input_asset, "source": it["source"],
            "language": it["language"], "prompt": it["prompt"], "messages": it["messages"],
            "chosen": chosen.text, "rejected": rejected.text, "chosen_score": chosen.score,
            "rejected_score": rejected.score, "margin": chosen.score - rejected.score,
            "chosen_model": chosen.model_id, "rejected_model": rejected.model_id,
            "chosen_temperature": chosen.temperature, "rejected_temperature": rejected.temperature,
            "reward_model": chosen.reward_model, "n_candidates": len(usable), "n_scored": len(scored),
            "candidate_scores": json.dumps([c.as_json() for c in cands], ensure_ascii=False),
            "metadata": meta_json})
    return PairsResult(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), issues, counts, margins)


def request_failures(counts: Counter) -> tuple[int, int]:
    """(failed requests, requests) over generation and reward: the share llm.max_failure_rate bounds."""
    reward_requests = counts["reward_requested"]
    failed = counts["candidates_llm_failed"] + sum(counts[f"reward_failed_{r}"] for r in REWARD_REQUEST_FAILURES)
    return failed, counts["candidates_requested"] + reward_requests


def reward_answer_failures(counts: Counter) -> tuple[int, int]:
    """(reward answers that came back unusable: parse_failed, non_finite, bad_input; candidates sent to
    the reward): the share `max_reward_failure_rate` bounds."""
    failed = sum(v for k, v in counts.items() if k.startswith("reward_failed_")
                 and k[len("reward_failed_"):] not in REWARD_REQUEST_FAILURES)
    return failed, counts["reward_requested"]


# --------------------------------------------------------------------------- reports

FUNNEL = [("prompts_in", "prompt rows in"), ("prompts", "prompts asked (valid, sampled)"),
          ("candidates_requested", "candidates requested"), ("candidates_llm_failed", "  llm_failed"),
          ("candidates_empty", "  empty"), ("candidates_truncated", "  truncated (dropped)"),
          ("candidates_duplicate", "  identical to an earlier candidate"),
          ("candidates_unique", "unique candidates"), ("prompts_with_2_candidates", "prompts with >= 2 unique candidates"),
          ("reward_requested", "candidates sent to the reward (their unique ones)"), ("candidates_scored", "scored"),
          ("prompts_with_2_scored", "prompts with >= 2 scored candidates"), ("tie", "  removed: tie"),
          ("below_min_margin", "  removed: below min_margin"), ("pairs", "pairs")]


def funnel_markdown(counts: Counter, removed: Optional[dict] = None) -> str:
    """The funnel (prompts -> candidates -> scored -> pairs), then every prompt that gave no pair by reason."""
    lines = ["| step | count |", "|---|---|"] + [f"| {label} | {counts.get(k, 0)} |" for k, label in FUNNEL]
    fails = sorted((k[len("reward_failed_"):], v) for k, v in counts.items() if k.startswith("reward_failed_") and v)
    lines += [f"| reward failed: {k} | {v} |" for k, v in fails]
    if removed:
        lines += ["", "| prompts without a pair | reason | count |", "|---|---|---|"]
        lines += [f"| {'rejected' if r in FAILURE_REASONS else 'removed'} | {r} | {n} |" for r, n in sorted(removed.items())]
    return "\n".join(lines)


MARGIN_BUCKETS = [(0.0, 0.0, "0 (tie)"), (0.0, 0.25, "(0, 0.25]"), (0.25, 0.5, "(0.25, 0.5]"), (0.5, 1.0, "(0.5, 1]"),
                  (1.0, 2.0, "(1, 2]"), (2.0, 4.0, "(2, 4]"), (4.0, float("inf"), "> 4")]


def margin_histogram(margins: list[tuple[float, bool]]) -> list[dict]:
    """Prompts with >= 2 scored candidates per margin bucket (best - worst), and how many became pairs."""
    out = []
    for lo, hi, label in MARGIN_BUCKETS:
        inside = [k for m, k in margins if (m == 0 if hi == 0 else lo < m <= hi)]
        out.append({"margin": label, "prompts": len(inside), "pairs": sum(inside)})
    return out


def histogram_markdown(hist: list[dict]) -> str:
    peak = max([h["prompts"] for h in hist] + [1])
    lines = ["| margin | prompts | pairs | |", "|---|---|---|---|"]
    lines += [f"| {h['margin']} | {h['prompts']} | {h['pairs']} | {'█' * round(20 * h['prompts'] / peak)} |"
              for h in hist]
    return "\n".join(lines)
