"""Magpie's unitag over one table: per instruction, the tags below, every failure counted. Pure: no
dagster; the models are injected:

    tagger    a session (`.run(task, rows, **decoding)`, `.metadata()`): the JSON tags
    guard     a session (`.complete(prompts, **decoding)`) or None: Llama Guard for `safety`
    reward    a callable (pairs, languages) -> per pair a RewardScore / RewardFailure, or None
    embedder  `.encode(texts) -> [n, d]` (unit vectors), optionally `.representable(texts)`

Tags (config `tags`; `language` always):

    input_quality    input_quality (very poor..excellent), quality_explanation
    difficulty       difficulty (very easy..very hard), intent, knowledge
    task_category    task_category (Magpie's 12), other_task_category (list)
    safety           safety (safe|unsafe), safety_category (S1..S14, comma-separated; null when safe)
    instruct_reward  instruct_reward (the reward resource's overall score), reward_model; only rows
                     with a response (others: null, counted `no_response`, not a failure)
    neighbors        min_neighbor_distance, repeat_count, min_similar_id (neighbors.gen_dis)
    language         common.language.detect_language of the instruction (also picks the en / ja template)

A tag the model fails to produce is null: never a default. Its failure is counted per tag and
reason (`llm_failed`: the request failed; `parse_failed`: no JSON / not Llama Guard's format;
`schema_violation`: JSON that breaks the schema, e.g. a rating outside the scale; the reward's own
reasons; `unrepresentable`: an instruction the embedding model cannot represent, left out of the
neighbour index) and named in the row's `tag_failures` (JSON {tag: "reason: detail"}; null when
none failed). A tag not run is null in every row (`tags_run` in the metadata says which ran).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from resources.reasons import Reason

from ..common.accounting import Accounting
from ..common.language import detect_language
from ..common import asset_names as A
from ..common.inputs import Item
from .neighbors import REPEAT_THRESHOLD, SEARCH_SPACE, gen_dis
from .tasks import (CATEGORY, DIFFICULTY, DIFFICULTY_LEVELS, GUARD, QUALITY, QUALITY_LEVELS, SAFETY_JUDGE,
                    SAFETY_VALUES, TASK_CATEGORIES, failure_reason, guard_prompt, judge_row, parse_guard_output)

#: the tables quality_tags can read (config `input_asset`; common/inputs.py says where their columns are)
TAG_INPUTS = (A.MAGPIE_INSTRUCTIONS, A.EVOLVED_INSTRUCTIONS, A.SFT_RECORDS, A.DEDUPLICATED_PROMPTS, A.SELECTED_SEEDS)
TAGS = ("input_quality", "difficulty", "task_category", "safety", "instruct_reward", "neighbors")
#: the columns whose value counts the metadata reports (with null)
DISTRIBUTIONS = {"input_quality": QUALITY_LEVELS, "difficulty": DIFFICULTY_LEVELS,
                 "task_category": TASK_CATEGORIES, "safety": SAFETY_VALUES}

OUTPUT_SCHEMA = pa.schema([
    ("id", pa.string()),  # the input row's id (uuid / id / all_prompt_id)
    ("source", pa.string()),
    ("input_asset", pa.string()),
    ("instruction", pa.string()),
    ("response", pa.string()),  # null: the input row has none
    ("language", pa.string()),  # detect_language(instruction): ISO 639-1, `und` without letters
    ("input_quality", pa.string()),
    ("quality_explanation", pa.string()),
    ("difficulty", pa.string()),
    ("intent", pa.string()),
    ("knowledge", pa.string()),
    ("task_category", pa.string()),
    ("other_task_category", pa.list_(pa.string())),
    ("safety", pa.string()),
    ("safety_category", pa.string()),
    ("instruct_reward", pa.float64()),
    ("reward_model", pa.string()),
    ("min_neighbor_distance", pa.float64()),  # squared L2 of unit vectors (= 2 - 2 cos)
    ("repeat_count", pa.int64()),
    ("min_similar_id", pa.string()),
    ("tag_failures", pa.string()),  # JSON {tag: "reason: detail"} of the tags that failed on this row; null if none
    ("tagger_model", pa.string()),  # backend:model of the JSON tags (and of the safety judge)
    ("safety_model", pa.string()),  # the guard's backend:model, or the tagger's (judge); null when safety not run
    ("tag_versions", pa.string()),  # JSON {task: version} of the templates that made the row's tags
])


@dataclass(frozen=True)
class TagSettings:
    tags: tuple[str, ...] = TAGS
    max_tokens: Optional[int] = None  # None: each template's default
    guard_max_tokens: Optional[int] = None
    temperature: Optional[float] = None  # None: the templates' (0.0, as Magpie)
    seed: int = 0
    repeat_threshold: float = REPEAT_THRESHOLD
    search_space: int = SEARCH_SPACE

    def check(self) -> None:
        unknown = [t for t in self.tags if t not in TAGS]
        if unknown:
            raise ValueError(f"tags: unknown tag(s) {', '.join(map(repr, unknown))} (known: {', '.join(TAGS)})")
        if self.repeat_threshold <= 0:
            raise ValueError(f"repeat_threshold must be > 0, got {self.repeat_threshold}")
        if self.search_space < 2:
            raise ValueError(f"search_space must be >= 2, got {self.search_space}")
        for name in ("max_tokens", "guard_max_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 (or null for the template's), got {v}")


@dataclass
class TagResult:
    table: pa.Table
    failures: dict  # tag -> Counter(reason -> rows)
    not_applicable: dict  # tag -> Counter(reason -> rows) (instruct_reward: no_response)
    requests: int = 0  # model requests asked (tagger + guard; the reward's are in its own metadata)
    llm_failed: int = 0  # of which failed

    def distributions(self) -> dict:
        return distributions(self.table)


def distributions(table: pa.Table) -> dict:
    """Counts of every value of input_quality / difficulty / task_category / safety, `null` included
    (the scale's values first, in order, zeros kept)."""
    out = {}
    for col, levels in DISTRIBUTIONS.items():
        c = Counter("null" if v is None else v for v in table[col].to_pylist())
        out[col] = {**{lv: c.pop(lv, 0) for lv in levels}, **dict(sorted(c.items())), "null": c.get("null", 0)}
    return out


def _decoding(settings: TagSettings, max_tokens: Optional[int]) -> dict:
    return {"n": 1, "seed": settings.seed, "temperature": settings.temperature, "max_tokens": max_tokens}


@dataclass
class _Tagging:
    """The state of one run_tags call: the output rows and what failed, per row and per tag."""

    items: list[Item]
    langs: list[str]
    rows: list[dict]
    fails: list[dict]
    failures: dict
    not_applicable: dict
    versions: dict = field(default_factory=dict)
    requests: int = 0
    llm_failed: int = 0

    def fail(self, i: int, tag: str, reason: str, detail: str) -> None:
        self.failures[tag][reason] += 1
        self.fails[i][tag] = f"{reason}: {detail}"[:500]


def _check_models(settings: TagSettings, tagger: Any, guard: Any, reward: Any, embedder: Any) -> bool:
    """Each requested tag has its model; returns whether the tagger session is used."""
    settings.check()
    run = set(settings.tags)
    needs_tagger = bool(run & {"input_quality", "difficulty", "task_category"} or ("safety" in run and guard is None))
    if needs_tagger and tagger is None:
        raise ValueError("the JSON tags need a tagger session")
    if "instruct_reward" in run and reward is None:
        raise ValueError("instruct_reward needs a reward scorer")
    if "neighbors" in run and embedder is None:
        raise ValueError("neighbors needs an embedder")
    return needs_tagger


def _json_tags(st: _Tagging, settings: TagSettings, tagger: Any, guard: Any, tagger_label: Optional[str],
               source: str, log: Optional[Callable[[str], None]]) -> None:
    """input_quality, difficulty, task_category (and safety without a guard): one JSON task each."""
    run = set(settings.tags)
    json_tags = [(t, task) for t, task in (("input_quality", QUALITY), ("difficulty", DIFFICULTY),
                                           ("task_category", CATEGORY)) if t in run]
    if "safety" in run and guard is None:
        json_tags.append(("safety", SAFETY_JUDGE))
    for tag, task in json_tags:
        if log:
            log(f"{source}: tag {tag} ({task.name} v{task.version}) on {len(st.items)} rows")
        st.versions[task.name] = task.version
        task_rows = [judge_row(it.instruction, it.response, lang) if tag == "safety"
                     else {"instruction": it.instruction, "language": lang} for it, lang in zip(st.items, st.langs)]
        results = tagger.run(task, task_rows, **_decoding(settings, settings.max_tokens))
        st.requests += len(results)
        for i, res in enumerate(results):
            (sample,) = res.samples
            if not isinstance(sample, dict):  # a TaskFailure
                reason = failure_reason(sample.error, sample.reason)
                st.llm_failed += sample.reason == Reason.LLM_FAILED
                st.fail(i, tag, reason, sample.error)
                continue
            r = st.rows[i]
            if tag == "input_quality":
                r["input_quality"], r["quality_explanation"] = sample["input_quality"], sample["explanation"]
            elif tag == "difficulty":
                r["difficulty"], r["intent"], r["knowledge"] = sample["difficulty"], sample["intent"], sample["knowledge"]
            elif tag == "task_category":
                r["task_category"] = sample["primary_tag"]
                r["other_task_category"] = list(dict.fromkeys(t for t in sample["other_tags"] if t != sample["primary_tag"]))
            else:
                r["safety"] = sample["safety"]
                r["safety_category"] = sample["category"] if sample["safety"] == "unsafe" else None
                r["safety_model"] = tagger_label


def _guard_safety(st: _Tagging, settings: TagSettings, guard: Any, source: str,
                  log: Optional[Callable[[str], None]]) -> None:
    """safety through the guard model (Llama Guard's output format)."""
    st.versions[GUARD.name] = GUARD.version
    guard_label = guard.metadata()["llm_model"]
    if log:
        log(f"{source}: tag safety (guard {guard_label}) on {len(st.items)} rows")
    prompts = [guard_prompt(it.instruction, it.response, lang) for it, lang in zip(st.items, st.langs)]
    answers = guard.complete(prompts, **_decoding(settings, settings.guard_max_tokens or GUARD.defaults.get("max_tokens")))
    st.requests += len(answers)
    for i, per in enumerate(answers):
        a = per[0]
        if not hasattr(a, "text"):  # an LLMError
            st.llm_failed += 1
            st.fail(i, "safety", Reason.LLM_FAILED, str(a))
            continue
        try:
            verdict, category = parse_guard_output(a.text)
        except ValueError as exc:  # TaskParseError
            st.fail(i, "safety", Reason.PARSE_FAILED, f"{exc} (answer {a.text.strip()[:80]!r})")
            continue
        st.rows[i].update(safety=verdict, safety_category=category, safety_model=guard_label)


def _instruct_reward(st: _Tagging, reward: Callable, source: str, log: Optional[Callable[[str], None]]) -> None:
    """The reward of (instruction, response) for the rows with a response."""
    items = st.items
    with_resp = [i for i, it in enumerate(items) if it.response is not None]
    st.not_applicable["instruct_reward"][Reason.NO_RESPONSE] = len(items) - len(with_resp)
    if not with_resp:
        return
    if log:
        log(f"{source}: tag instruct_reward on {len(with_resp)} rows with a response")
    scores = reward([(items[i].instruction, items[i].response) for i in with_resp], [st.langs[i] for i in with_resp])
    for i, s in zip(with_resp, scores):
        if getattr(s, "ok", False):
            st.rows[i]["instruct_reward"], st.rows[i]["reward_model"] = float(s.overall), s.model
        else:
            st.fail(i, "instruct_reward", s.reason, s.error)


def _neighbors(st: _Tagging, settings: TagSettings, embedder: Any) -> None:
    """Nearest-neighbour distance and repeat count over the representable instructions."""
    items = st.items
    texts = [it.instruction for it in items]
    ok = np.asarray(embedder.representable(texts), dtype=bool) if hasattr(embedder, "representable") \
        else np.ones(len(texts), dtype=bool)
    keep = [i for i in range(len(items)) if ok[i]]
    for i in range(len(items)):
        if not ok[i]:
            st.fail(i, "neighbors", Reason.UNREPRESENTABLE, "the embedding model does not cover most of the text's letters")
    vecs = embedder.encode([texts[i] for i in keep]) if keep else np.zeros((0, 1), np.float32)
    for i, t in zip(keep, gen_dis(vecs, [items[i].id for i in keep], threshold=settings.repeat_threshold,
                                  search_space=settings.search_space)):
        st.rows[i].update(min_neighbor_distance=t.min_neighbor_distance, repeat_count=t.repeat_count,
                          min_similar_id=t.min_similar_id)


def run_tags(items: list[Item], source: str, input_asset: str, settings: TagSettings, *, tagger: Any = None,
             guard: Any = None, reward: Optional[Callable] = None, embedder: Any = None,
             log: Optional[Callable[[str], None]] = None) -> TagResult:
    """Tag every item (see the module docstring); the rows keep the input's order."""
    needs_tagger = _check_models(settings, tagger, guard, reward, embedder)
    run = set(settings.tags)
    langs = [detect_language(it.instruction) for it in items]
    st = _Tagging(items=items, langs=langs, fails=[{} for _ in items],
                  rows=[{"id": it.id, "source": source, "input_asset": input_asset, "instruction": it.instruction,
                         "response": it.response, "language": lang} for it, lang in zip(items, langs)],
                  failures={t: Counter() for t in settings.tags}, not_applicable={t: Counter() for t in settings.tags})
    tagger_label = tagger.metadata()["llm_model"] if tagger is not None and needs_tagger else None
    _json_tags(st, settings, tagger, guard, tagger_label, source, log)
    if "safety" in run and guard is not None:
        _guard_safety(st, settings, guard, source, log)
    if "instruct_reward" in run:
        _instruct_reward(st, reward, source, log)
    if "neighbors" in run and items:
        _neighbors(st, settings, embedder)
    vjson = json.dumps(dict(sorted(st.versions.items())), sort_keys=True)
    for r, f in zip(st.rows, st.fails):
        r["tag_failures"] = json.dumps(f, ensure_ascii=False, sort_keys=True) if f else None
        r["tagger_model"] = tagger_label
        r["tag_versions"] = vjson
    table = pa.Table.from_pylist(st.rows, schema=OUTPUT_SCHEMA)
    return TagResult(table=table, failures={t: dict(c) for t, c in st.failures.items()},
                     not_applicable={t: dict(c) for t, c in st.not_applicable.items() if c},
                     requests=st.requests, llm_failed=st.llm_failed)


def empty_result() -> TagResult:
    return TagResult(table=OUTPUT_SCHEMA.empty_table(), failures={}, not_applicable={})


def funnel_markdown(acc: Accounting, res: TagResult, tags: tuple[str, ...]) -> str:
    """rows in -> rejected -> tagged, then per tag: tagged / failed (by reason) / not applicable."""
    rej = ", ".join(f"{k} {v}" for k, v in sorted(acc.rejected_by_reason.items())) or "none"
    lines = [f"**{acc.rows_in}** rows in -> rejected {acc.rejected} ({rej}) -> **{acc.rows_out}** tagged", "",
             "| tag | with a value | failed | failed by reason | not applicable |", "|---|---|---|---|---|"]
    col = {"input_quality": "input_quality", "difficulty": "difficulty", "task_category": "task_category",
           "safety": "safety", "instruct_reward": "instruct_reward", "neighbors": "repeat_count"}
    for t in tags:
        valued = res.table.num_rows - res.table[col[t]].null_count
        f = res.failures.get(t, {})
        na = res.not_applicable.get(t, {})
        lines.append(f"| {t} | {valued} | {sum(f.values())} | {', '.join(f'{k} {v}' for k, v in sorted(f.items())) or ''} "
                     f"| {', '.join(f'{k} {v}' for k, v in sorted(na.items())) or ''} |")
    lines.append(f"| language | {res.table.num_rows} | 0 | | |")
    return "\n".join(lines)
