"""Evol-Instruct (WizardLM) over a prompt table: the chain of evolution operations, the rounds, the
elimination rules (language-aware), the seed's judge, the answers and the output rows.

A **lineage** starts at one input row. Each round runs the `chain` (e.g. width > depth > flatten)
over every lineage's current prompt; each step is one evolution of the step's parent:

- evolve (generator; `depth` draws its method per lineage, round and step from `seed`);
- eliminate, instruction rules first: (4) it copies the template's words; (3) it is only punctuation
  and stop words (empty included); (1) it adds no information over its parent: identical text, or the
  equality judge says `equal` (width and depth only: flatten must not add information). An
  unparseable equality verdict eliminates it too (`equal_judge_failed`, counted).
- A failed step leaves its parent in place (WizardLM puts the parent back in the pool): the next step
  of the chain evolves the parent, and the path records only the steps that survived.

At the end of a round, a lineage whose prompt changed is a candidate: the seed's judge (natural
language in the prompt's language, clear intent, safe, answerable; accepted only when `accept` and all
four criteria are true; an unparseable verdict is a counted failure) -> the answer for accepted
prompts (generator, the answer decoding) -> rules on the answer: (2) a refusal ("sorry", "申し訳",
"できません", ...) that is short (under `refusal_max_words` whitespace words; under
`refusal_max_chars` characters for Japanese and Chinese); (3) only punctuation and stop words. A
candidate that passes is an output row and the lineage's new prompt; otherwise the lineage goes back
to its prompt from before the round.

Row accounting is per input row: it ends as one or more output rows (one per round it passed), or
with the reason of its last failure (removed: an elimination rule or the judge's rejection; rejected:
a generation error or an unparseable verdict).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from resources.llm import TaskFailure
from resources.reasons import Reason

from ..common import asset_names as A
from ..common.accounting import RowIssue
from ..common.inputs import input_table
from ..common.language import detect_language
from ..common.text import is_char_language
from ..common.text import length_units as text_length
from . import tasks as T

#: the prompt tables evolved_instructions can read (config `input_asset`; their columns: common/inputs.py)
INPUTS = (A.SELECTED_SEEDS, A.DEDUPLICATED_PROMPTS, A.HARD_PROBLEMS)
OPERATIONS = ("width", "depth", "flatten")
#: operations that must add information (elimination rule 1 applies)
EQUALITY_OPS = frozenset({"width", "depth"})
DEPTH_METHODS = tuple(T.DEPTH_METHODS)  # constraints, deepen, concretize, reasoning, complicate_input
JUDGE_CRITERIA = ("natural", "clear_intent", "safe", "answerable")
#: reasons that are failures (counted as `rejected`); the other reasons are policy (`removed`)
FAILURE_REASONS = frozenset({Reason.LLM_FAILED, Reason.EQUAL_JUDGE_FAILED, Reason.JUDGE_FAILED})

CONVERSATION_TYPE = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
OUTPUT_SCHEMA = pa.schema([
    ("id", pa.string()),  # '<parent_id>:evol:r<round>'
    ("source", pa.string()),
    ("input", pa.string()),  # the evolved prompt
    ("output", pa.string()),  # the generator's answer
    ("conversation", CONVERSATION_TYPE),  # [{from: system}, {from: human}, {from: gpt}]
    ("parent_id", pa.string()),  # the input row's all_prompt_id
    ("seed_prompt", pa.string()),  # the input row's prompt
    ("round", pa.int64()),
    ("evolution_path", pa.string()),  # steps joined by '>', rounds by '|': 'width>depth:constraints>flatten'
    ("language", pa.string()),
    ("template_versions", pa.string()),  # JSON {task: version} of every task that made the row
    ("generator_model", pa.string()),
    ("judge_model", pa.string()),
    ("judge_verdict", pa.string()),  # JSON: the seed judge's verdict
])

# ------------------------------------------------------------------------------------ rules

REFUSAL_MARKERS = {
    "en": ("sorry", "i cannot", "i can't", "i can not", "i'm unable", "i am unable", "i'm not able",
           "i am not able", "as an ai"),
    "ja": ("申し訳", "できません", "すみません", "ごめんなさい", "お答えできません", "お手伝いできません"),
    "zh": ("抱歉", "对不起", "无法", "不能回答"),
}

#: English stop words (the NLTK list)
EN_STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don should now
d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn
weren won wouldn
""".split())
#: Japanese stop words (particles, auxiliaries, formal nouns; after SlothLib's list), longest first
JA_STOP_WORDS = tuple(sorted(set("""
あそこ あっ あの あのかた あの人 あり あります ある あれ い いう います いる う うち え お および おり おります
か かつて から が き ここ こちら こと この これ これら さ さらに し しかし する ず せ せる そこ そして その
その他 その後 それ それぞれ それで た ただし たち ため たり だ だっ だれ つ て で でき できる です では でも と
という といった とき ところ として とともに とも と共に どこ どの な なお なかっ ながら なく なっ など なに
なら なり なる において における について にて によって により による に対して に対する に関する の ので
のみ は ば へ ほか ほとんど ほど ます また または まで も もの ものの や よう より ら られ られる れ れる
を ん 及び 特に
""".split()), key=len, reverse=True))


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "")


def is_short_refusal(answer: str, language: str, max_words: int = 80, max_chars: int = 200) -> bool:
    """Rule 2: the answer contains a refusal marker (English or the row's language) and is short:
    under `max_words` whitespace words (WizardLM: 80), or under `max_chars` characters for ja / zh
    (whitespace words do not work on Japanese: Evol-Instruct-jp's count is the whole answer)."""
    text = _nfkc(answer).casefold()
    lang = (language or "").split("-")[0]
    markers = REFUSAL_MARKERS["en"] + REFUSAL_MARKERS.get(lang, ())
    if not any(m in text for m in markers):
        return False
    limit = max_chars if is_char_language(language) else max_words
    return text_length(text, language) < limit


def _strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)


def only_punctuation_and_stop_words(text: str, language: str) -> bool:
    """Rule 3: nothing but punctuation, symbols and stop words (an empty text too). Whitespace tokens
    against the English list; for Japanese / Chinese (or any text with CJK characters) the stop words
    are removed as substrings, longest first, and nothing may remain."""
    s = _strip_punctuation(_nfkc(text).casefold())
    tokens = re.findall(r"\w+", s)
    if not is_char_language(language) and not any(_is_cjk(ch) for ch in s):
        return all(t in EN_STOP_WORDS for t in tokens)
    rest = " ".join(t for t in tokens if t not in EN_STOP_WORDS)
    for w in JA_STOP_WORDS:
        rest = rest.replace(w, "")
    return not rest.strip()


def _is_cjk(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def copied_template_words(text: str, words=T.TEMPLATE_WORDS) -> Optional[str]:
    """Rule 4: the first of the template's own words ('#The Given Prompt#', 'rewritten prompt',
    '#与えられたプロンプト#', ...) that the evolved prompt contains (case-insensitive, NFKC), or None."""
    s = _nfkc(text).casefold()
    for w in words:
        if _nfkc(w).casefold() in s:
            return w
    return None


def same_text(a: str, b: str) -> bool:
    return " ".join(_nfkc(a).casefold().split()) == " ".join(_nfkc(b).casefold().split())


def instruction_rule(evolved: str, parent: str, language: str, words=T.TEMPLATE_WORDS) -> Optional[tuple[str, str]]:
    """The instruction-level rules in order (4, 3, identical = 1): (rule, detail) of the first that
    eliminates `evolved`, or None (the equality judge is asked next, for width and depth)."""
    hit = copied_template_words(evolved, words)
    if hit:
        return "template_words", f"copies {hit!r}"
    if only_punctuation_and_stop_words(evolved, language):
        return "stopwords", "only punctuation and stop words" if evolved.strip() else "empty"
    if same_text(evolved, parent):
        return "equal", "identical to its parent"
    return None


def equality_outcome(samples: list) -> tuple[str, str]:
    """Rule 1 from the equality judge's samples: ('equal' | 'not_equal' | 'equal_judge_failed', detail).
    An unparseable verdict never lets the evolution through."""
    if not samples or isinstance(samples[0], TaskFailure):
        fail = samples[0] if samples else TaskFailure(Reason.LLM_FAILED, "no answer")
        return "equal_judge_failed", str(fail)[:300]
    v = samples[0]
    return ("equal" if v.get("equal") is True else "not_equal"), str(v.get("reason", ""))[:300]


def judge_accepts(verdict: Any) -> bool:
    """Accepted only when `accept` and every criterion are true (a contradictory verdict is not)."""
    return isinstance(verdict, dict) and verdict.get("accept") is True and all(
        verdict.get(k) is True for k in JUDGE_CRITERIA)


def judge_outcome(samples: list) -> tuple[str, Any]:
    """('accepted' | 'judge_rejected' | 'judge_failed', verdict or failure). A failure (unparseable or
    off-schema verdict, or a failed request) is never an acceptance."""
    if not samples or isinstance(samples[0], TaskFailure):
        return "judge_failed", samples[0] if samples else TaskFailure(Reason.LLM_FAILED, "no answer")
    v = samples[0]
    return ("accepted" if judge_accepts(v) else "judge_rejected"), v


# ------------------------------------------------------------------------------------ chain


def parse_chain(chain) -> list[str]:
    """`['width', 'depth', 'flatten']` or 'width>depth>flatten' -> the list, validated."""
    steps = [s.strip() for s in (chain.split(">") if isinstance(chain, str) else chain) if s and s.strip()]
    bad = [s for s in steps if s not in OPERATIONS]
    if not steps or bad:
        raise ValueError(f"chain must be a non-empty sequence of {', '.join(OPERATIONS)}; got {chain!r}")
    return steps


def depth_method(seed: int, lineage_id: str, round_: int, step: int, methods=DEPTH_METHODS) -> str:
    """The in-depth method of one step: a seeded draw per (lineage, round, step), independent of the
    batch and of the other rows."""
    h = hashlib.blake2b(f"{seed}|{lineage_id}|{round_}|{step}".encode(), digest_size=8).digest()
    return methods[int.from_bytes(h, "big") % len(methods)]


def step_seed(seed: int, round_: int, step: int) -> int:
    """The sampling seed of one (round, step): a parent put back in the pool is evolved anew in the next
    round (the same request would give the same, failed, evolution)."""
    return seed * 1000 + round_ * 10 + step


def conversation(system: str, prompt: str, answer: str) -> list[dict]:
    return [{"from": "system", "value": system}, {"from": "human", "value": prompt},
            {"from": "gpt", "value": answer}]


# ------------------------------------------------------------------------------------ input


def input_items(table: pa.Table, source: str, max_input_chars: int,
                asset: str = A.SELECTED_SEEDS) -> tuple[list[dict], list[RowIssue]]:
    """The prompts to evolve (id, source, prompt, language) and the removed rows. The language comes from
    the table's language column when it has one (deduplicated_prompts), else it is detected."""
    spec = input_table(asset, INPUTS)
    id_col, text_col = spec.id, spec.text
    missing = [c for c in (id_col, text_col) if c not in table.column_names]
    if missing:
        raise ValueError(f"the input table has no column {', '.join(missing)} (columns: {', '.join(table.column_names)})")
    items, issues = [], []
    has_lang = spec.language in table.column_names
    for r in table.to_pylist():
        prompt = r.get(text_col) or ""
        if not prompt.strip():
            issues.append(RowIssue(reason=Reason.EMPTY_PROMPT, outcome="removed", detail=str(r[id_col])))
            continue
        if len(prompt) > max_input_chars:
            issues.append(RowIssue(reason=Reason.PROMPT_TOO_LONG, outcome="removed",
                                   detail=f"{r[id_col]}: {len(prompt)} > {max_input_chars} chars",
                                   raw=prompt[:2000]))
            continue
        lang = (r.get(spec.language) if has_lang else None) or detect_language(prompt)
        items.append({"id": r[id_col], "source": r.get("source") or source, "prompt": prompt,
                      "language": lang})
    return items, issues


def sample_items(items: list[dict], k: int, seed: int) -> list[dict]:
    """At most `k` items (0 = all): the `k` smallest seeded hashes of the ids (stable when the table grows)."""
    if not k or k >= len(items):
        return items
    key = lambda it: hashlib.blake2b(f"{seed}|{it['id']}".encode(), digest_size=8).digest()  # noqa: E731
    keep = {it["id"] for it in sorted(items, key=key)[:k]}
    return [it for it in items if it["id"] in keep]


# ------------------------------------------------------------------------------------ the run


@dataclass
class Lineage:
    id: str
    source: str
    seed_prompt: str
    language: str
    prompt: str  # the current prompt (the last one that passed a whole round)
    path: list[str] = field(default_factory=list)  # one entry per passed round: 'width>depth:deepen'
    tasks_used: set = field(default_factory=set)
    events: list[tuple[int, str, str, str]] = field(default_factory=list)  # (round, op, reason, detail)
    outputs: int = 0


@dataclass
class EvolutionResult:
    table: pa.Table
    issues: list[RowIssue]  # one per lineage without an output row (its last failure)
    inputs: int
    inputs_with_output: int
    funnel: dict  # operation (and 'round') -> counts
    by_language: dict
    eliminated: dict  # rule -> count, over every step and answer
    depth_methods: dict
    rendered: dict  # 'task/lang' -> the first rendered messages (what the session sent)
    generation_errors: int
    requests: int
    events: int


_STEP_COLUMNS = ("in", "evolved", "failed", "eliminated_truncated", "eliminated_template_words",
                 "eliminated_stopwords", "eliminated_equal", "eliminated_equal_judge_failed", "survived")
_ROUND_COLUMNS = ("judged", "judge_failed", "judge_rejected", "accepted", "answered", "answer_truncated",
                  "answer_failed", "eliminated_refusal", "eliminated_answer_stopwords", "out")


def cut_at_max_tokens(res) -> bool:
    """The (first) completion stopped at max_tokens, not at the end of its answer."""
    return bool(res.completions) and getattr(res.completions[0], "finish_reason", None) == "length"


def model_name(session) -> str:
    s = session.settings
    return f"{s.get('backend')}:{s.get('model')}"


@dataclass
class _Round:
    """One round's state per lineage: the prompt so far, the steps it passed, the templates used."""

    current: dict[str, str]
    steps: dict[str, list[str]]
    used: dict[str, set]


class _Evolution:
    """The state of one run_evolution call: lineages, funnel counters, output rows."""

    def __init__(self, items: list[dict], gen, judge, cfg):
        self.chain = parse_chain(cfg.chain)
        if cfg.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {cfg.rounds}")
        self.methods = tuple(cfg.depth_methods) or DEPTH_METHODS
        bad = [m for m in self.methods if m not in T.DEPTH_METHODS]
        if bad:
            raise ValueError(f"depth_methods must be among {', '.join(T.DEPTH_METHODS)}; got {bad}")
        self.gen, self.judge, self.cfg = gen, judge, cfg
        self.lineages = [Lineage(id=it["id"], source=it["source"], seed_prompt=it["prompt"], language=it["language"],
                                 prompt=it["prompt"]) for it in items]
        self.funnel: dict[str, Counter] = defaultdict(Counter)
        self.by_lang: dict[str, Counter] = defaultdict(Counter)
        self.eliminated: Counter = Counter()
        self.method_counts: Counter = Counter()
        self.rendered: dict[str, list] = {}
        self.stats = Counter()
        self.out_rows: list[dict] = []
        self.gen_model, self.judge_model = model_name(gen), model_name(judge)
        for lin in self.lineages:
            self.by_lang[lin.language]["inputs"] += 1

    def run(self, session, task, rows, **kw):
        """session.run, keeping the first rendered messages per task/language and the request counts."""
        results = session.run(task, rows, **kw)
        for res in results:
            self.rendered.setdefault(f"{task.name}/{res.language}", res.messages)
            self.stats["requests"] += len(res.samples)
            self.stats["generation_errors"] += sum(1 for s in res.samples if isinstance(s, TaskFailure)
                                                   and s.reason == Reason.LLM_FAILED)
        return results

    def evolve_step(self, rnd: int, step: int, op: str, r: _Round) -> None:
        """One operation of the chain on every lineage: evolve, the instruction rules, the equality judge."""
        cfg, funnel, task = self.cfg, self.funnel, T.EVOLVE[op]
        rows, labels = [], []
        for lin in self.lineages:
            row = {"prompt": r.current[lin.id], "language": lin.language}
            label = op
            if op == "depth":
                m = depth_method(cfg.seed, lin.id, rnd, step, self.methods)
                row["method"] = T.depth_method_text(m, task.language_of(row))
                label = f"depth:{m}"
                self.method_counts[m] += 1
            rows.append(row)
            labels.append(label)
        results = self.run(self.gen, task, rows, temperature=cfg.evolve_temperature, max_tokens=cfg.evolve_max_tokens,
                           seed=step_seed(cfg.seed, rnd, step))
        funnel[op]["in"] += len(rows)
        to_judge = []  # (lineage, label, evolved)
        for lin, label, res in zip(self.lineages, labels, results):
            if res.failures:
                funnel[op]["failed"] += 1
                lin.events.append((rnd, label, Reason.LLM_FAILED, str(res.failures[0])[:500]))
                continue
            evolved = res.values[0]
            funnel[op]["evolved"] += 1
            if cut_at_max_tokens(res):
                # cut at evolve_max_tokens: an unfinished prompt (maybe inside a character), never kept
                _eliminate(lin, rnd, label, ("truncated", f"cut at evolve_max_tokens {cfg.evolve_max_tokens}: "
                                                          f"{evolved[-200:]!r}"), funnel[op], self.eliminated)
                continue
            hit = instruction_rule(evolved, r.current[lin.id], lin.language)
            if hit:
                _eliminate(lin, rnd, label, hit, funnel[op], self.eliminated)
            else:
                to_judge.append((lin, label, evolved))
        judged = to_judge if op in EQUALITY_OPS else []  # rule 1: flatten must not add information
        verdicts = {}
        if judged:
            eq = self.run(self.judge, T.EQUAL, [{"first": r.current[lin.id], "second": ev, "language": lin.language}
                                                for lin, _, ev in judged], max_tokens=cfg.judge_max_tokens, seed=cfg.seed)
            verdicts = {lin.id: equality_outcome(res.samples) for (lin, _, _), res in zip(judged, eq)}
        for lin, label, evolved in to_judge:
            if lin.id in verdicts:
                outcome, detail = verdicts[lin.id]
                if outcome != "not_equal":
                    _eliminate(lin, rnd, label, (outcome, detail), funnel[op], self.eliminated)
                    continue
                r.used[lin.id].add(T.EQUAL.name)
            r.current[lin.id] = evolved
            r.steps[lin.id].append(label)
            r.used[lin.id].add(task.name)
            funnel[op]["survived"] += 1

    def count(self, r: _Round, lin: Lineage, key: str) -> None:
        """A round-end count, for the round and every operation the lineage passed this round."""
        self.funnel["round"][key] += 1
        for op in dict.fromkeys(s.split(":")[0] for s in r.steps[lin.id]):
            self.funnel[op][key] += 1

    def judge_round(self, rnd: int, r: _Round) -> list[tuple[Lineage, dict]]:
        """The quality judge on every changed prompt; returns the accepted (lineage, verdict)."""
        cands = [lin for lin in self.lineages if r.steps[lin.id]]
        self.funnel["round"]["candidates"] += len(cands)
        verdicts = self.run(self.judge, T.JUDGE, [{"prompt": r.current[lin.id], "language": lin.language}
                                                  for lin in cands],
                            max_tokens=self.cfg.judge_max_tokens, seed=self.cfg.seed) if cands else []
        accepted = []
        for lin, res in zip(cands, verdicts):
            self.count(r, lin, "judged")
            self.by_lang[lin.language]["judged"] += 1
            outcome, verdict = judge_outcome(res.samples)
            if outcome == "judge_failed":
                self.count(r, lin, "judge_failed")
                lin.events.append((rnd, "judge", Reason.JUDGE_FAILED, str(verdict)[:500]))
            elif outcome == "judge_rejected":
                self.count(r, lin, "judge_rejected")
                lin.events.append((rnd, "judge", Reason.JUDGE_REJECTED, str(verdict.get("reason", ""))[:500]))
            else:
                self.count(r, lin, "accepted")
                self.by_lang[lin.language]["accepted"] += 1
                accepted.append((lin, verdict))
        return accepted

    def answer_round(self, rnd: int, r: _Round, accepted: list[tuple[Lineage, dict]]) -> None:
        """Answer the accepted prompts, rules 2 and 3 on the answer; a passing lineage writes a row."""
        cfg = self.cfg
        answers = self.run(self.gen, T.ANSWER, [{"prompt": r.current[lin.id], "language": lin.language}
                                                for lin, _ in accepted],
                           temperature=cfg.answer_temperature, max_tokens=cfg.answer_max_tokens,
                           seed=cfg.seed) if accepted else []
        for (lin, verdict), res in zip(accepted, answers):
            if res.failures:
                self.count(r, lin, "answer_failed")
                lin.events.append((rnd, "answer", Reason.LLM_FAILED, str(res.failures[0])[:500]))
                continue
            self.count(r, lin, "answered")
            answer = res.values[0]
            if cut_at_max_tokens(res):
                self.count(r, lin, "answer_truncated")  # kept, counted: raise answer_max_tokens for whole answers
            rule = None
            if is_short_refusal(answer, lin.language, cfg.refusal_max_words, cfg.refusal_max_chars):
                rule = ("refusal", answer[:200])
            elif only_punctuation_and_stop_words(answer, lin.language):
                rule = ("answer_stopwords", answer[:200] or "empty answer")
            if rule:
                self.count(r, lin, f"eliminated_{rule[0]}")
                self.eliminated[rule[0]] += 1
                lin.events.append((rnd, "answer", Reason(f"eliminated_{rule[0]}"), rule[1]))
                continue
            self.count(r, lin, "out")
            self.by_lang[lin.language]["out"] += 1
            self.output(rnd, r, lin, verdict, answer, res.messages)

    def output(self, rnd: int, r: _Round, lin: Lineage, verdict: dict, answer: str, messages: list) -> None:
        lin.prompt = r.current[lin.id]
        lin.path.append(">".join(r.steps[lin.id]))
        lin.tasks_used |= r.used[lin.id] | {T.JUDGE.name, T.ANSWER.name}
        lin.outputs += 1
        system = next((m["content"] for m in messages if m["role"] == "system"), T.system_prompt(lin.language))
        self.out_rows.append({
            "id": f"{lin.id}:evol:r{rnd}", "source": lin.source, "input": lin.prompt, "output": answer,
            "conversation": conversation(system, lin.prompt, answer), "parent_id": lin.id,
            "seed_prompt": lin.seed_prompt, "round": rnd, "evolution_path": "|".join(lin.path),
            "language": lin.language,
            "template_versions": json.dumps({t: _TASKS[t].version for t in sorted(lin.tasks_used)}),
            "generator_model": self.gen_model, "judge_model": self.judge_model,
            "judge_verdict": json.dumps(verdict, ensure_ascii=False, sort_keys=True)})

    def round(self, rnd: int) -> None:
        """Every operation of the chain, then judge, answer and keep. A lineage without a row this
        round keeps `lin.prompt` from before it: the parent back in the pool."""
        r = _Round(current={lin.id: lin.prompt for lin in self.lineages},
                   steps={lin.id: [] for lin in self.lineages}, used={lin.id: set() for lin in self.lineages})
        self.funnel["round"]["in"] += len(self.lineages)
        for step, op in enumerate(self.chain):
            self.evolve_step(rnd, step, op, r)
        self.answer_round(rnd, r, self.judge_round(rnd, r))

    def issues(self) -> list[RowIssue]:
        """One per lineage without an output row: its last failure."""
        issues = []
        for lin in self.lineages:
            if lin.outputs:
                continue
            rnd, op, reason, detail = lin.events[-1]
            issues.append(RowIssue(
                reason=reason, outcome="rejected" if reason in FAILURE_REASONS else "removed",
                detail=f"{lin.id}: round {rnd} {op}: {detail}"[:1000] + (f" ({len(lin.events)} failed steps)"
                                                                         if len(lin.events) > 1 else ""),
                raw=lin.seed_prompt[:2000]))
        return issues

    def result(self) -> EvolutionResult:
        lineages, funnel = self.lineages, self.funnel
        issues = self.issues()
        for lang, c in self.by_lang.items():
            c["acceptance_rate"] = round(c["accepted"] / c["judged"], 3) if c["judged"] else None
        table = pa.Table.from_pylist(self.out_rows, schema=OUTPUT_SCHEMA) if self.out_rows else OUTPUT_SCHEMA.empty_table()
        ordered = {op: {k: funnel[op][k] for k in (*_STEP_COLUMNS, *_ROUND_COLUMNS)} for op in dict.fromkeys(self.chain)}
        ordered["round"] = {k: funnel["round"][k] for k in ("in", "candidates", *_ROUND_COLUMNS)}
        return EvolutionResult(
            table=table, issues=issues, inputs=len(lineages), inputs_with_output=sum(1 for x in lineages if x.outputs),
            funnel=ordered, by_language={k: dict(v) for k, v in sorted(self.by_lang.items())},
            eliminated=dict(self.eliminated), depth_methods=dict(self.method_counts), rendered=self.rendered,
            generation_errors=self.stats["generation_errors"], requests=self.stats["requests"],
            events=sum(len(x.events) for x in lineages))


def run_evolution(items: list[dict], gen, judge, cfg) -> EvolutionResult:
    """Evolve `items` (from `input_items`) with `gen` (evolutions, answers) and `judge` (equality and
    quality verdicts): LLMSession-like objects with `.run(task, rows, **decoding)` and `.settings`.
    `cfg`: chain, rounds, depth_methods, seed, evolve_temperature, evolve_max_tokens, judge_max_tokens,
    answer_temperature, answer_max_tokens, refusal_max_words, refusal_max_chars."""
    evo = _Evolution(items, gen, judge, cfg)
    for rnd in range(1, cfg.rounds + 1):
        evo.round(rnd)
    return evo.result()


_TASKS = {t.name: t for t in (*T.EVOLVE.values(), T.EQUAL, T.JUDGE, T.ANSWER)}


def _eliminate(lin: Lineage, rnd: int, label: str, hit: tuple[str, str], counts: Counter, eliminated: Counter) -> None:
    rule, detail = hit
    counts[f"eliminated_{rule}"] += 1
    eliminated[rule] += 1
    reason = Reason(rule if rule == Reason.EQUAL_JUDGE_FAILED else f"eliminated_{rule}")
    lin.events.append((rnd, label, reason, detail))


# ------------------------------------------------------------------------------------ reports


def funnel_markdown(funnel: dict) -> str:
    """Per operation: in -> evolved -> eliminated by rule -> survived; then, over the round candidates
    whose path holds the operation: judged -> accepted -> answered -> eliminated on the answer -> out.
    The `round` row counts lineages x rounds."""
    cols = [*_STEP_COLUMNS, "candidates", *_ROUND_COLUMNS]
    lines = ["| operation | " + " | ".join(c.replace("eliminated_", "elim. ") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for op, counts in funnel.items():
        lines.append(f"| {op} | " + " | ".join(str(counts.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def language_markdown(by_language: dict) -> str:
    lines = ["| language | inputs | judged | accepted | acceptance rate | output rows |", "|---|---|---|---|---|---|"]
    for lang, c in by_language.items():
        rate = "" if c.get("acceptance_rate") is None else f"{c['acceptance_rate']:.0%}"
        lines.append(f"| {lang} | {c.get('inputs', 0)} | {c.get('judged', 0)} | {c.get('accepted', 0)} | {rate} | "
                     f"{c.get('out', 0)} |")
    return "\n".join(lines)


def rendered_markdown(rendered: dict, chars: int = 300) -> str:
    lines = ["| task / language | first message sent |", "|---|---|"]
    for k, msgs in sorted(rendered.items()):
        text = " ".join(msgs[-1]["content"].split())[:chars].replace("|", "\\|")
        lines.append(f"| {k} | {text} |")
    return "\n".join(lines)
