"""The hygiene rules: cheap, rule-based checks of every response before any model looks at it. Pure
Python + regex (no dagster, no model).

A rule sees one row: its prompt, the response fields the table's spec names (with a role), and its
finish reason where the table has one. Each rule is named, and set to `drop` (the row is removed, a
counted reject with the rule, its reason and the matched span), `flag` (the row stays, the rule's
name goes into its `hygiene_flags` column) or `off`. The rules, in the order that decides which one a
dropped row is counted under (the first failing `drop` rule):

    rule              reasons                                     fields it reads
    empty             empty_response                              response
    format_tokens     format_tokens (<think>, <|im_start|>, ...)  response, final, prompt
    unclosed_fence    unclosed_fence                              response
    identity          identity_leak                               response, final
    knowledge_cutoff  knowledge_cutoff                            response
    refusal           refusal                                     response (its first `refusal_window` chars)
    repetition        repeated_paragraph | repeated_sentence | repeated_ngrams   response
    truncated         cut_at_length_limit                         the row's finish reason
    language          language_mismatch                           prompt vs response
    script            foreign_script | foreign_hanzi | low_kana_share | chinese_variant   response (+ prompt)
    length            too_short_for_prompt                        prompt vs response

Roles: `response` (a whole answer: every rule), `final` (a short final answer, e.g. a CoT's "72":
format tokens and identity only; it may be empty, where the source keeps the trace whole), `prompt`
(format tokens only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from partitions.registry import register_hygiene_rules
from resources.reasons import Reason

from ..common.reason_rules import RULE_REASONS  # noqa: F401 (the rules' reasons; the export reads them too)
from ..common.text import CHAR_LANGUAGES, length_units

from .lists import PhraseLists
from .repetition import RepetitionRules, find_repetition
from .scripts import (UND, Scripts, chinese_variant, coarse_language, count_scripts, expected_scripts, foreign_han,
                      language, plainly_english, prose, _RUNS)

RULES = ("empty", "format_tokens", "unclosed_fence", "identity", "knowledge_cutoff", "refusal", "repetition",
         "truncated", "language", "script", "length")
ACTIONS = ("drop", "flag", "off")
ROLES = ("response", "final", "prompt")
register_hygiene_rules(RULES, ACTIONS)  # what a registry entry's `hygiene: {rule: action}` may say
#: the rules each role is checked by
ROLE_RULES = {"response": frozenset(RULES) - {"truncated"},
              # a CoT record's answer is empty by design where its source keeps the trace whole (answer_rule none)
              "final": frozenset({"format_tokens", "identity"}),
              "prompt": frozenset({"format_tokens"})}
SPAN_CHARS = 120
PROSE_CHARS = 8000
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Thresholds:
    min_letters: int = 40  # fewer letters: two texts of one script family (Latin, ...) are not compared
    foreign_script_share: float = 0.05  # letters outside the expected scripts (open-instruct's Chinese filter: 5%)
    foreign_script_min: int = 3
    foreign_hanzi_share: float = 0.02  # Japanese: Han characters outside JIS (cp932), of all Han characters
    foreign_hanzi_min: int = 3
    min_kana_share: float = 0.15  # Japanese: kana / (kana + Han) below this reads as Chinese ...
    kana_min_han: int = 40  # ... in an answer of at least this many Han characters
    variant_share: float = 0.2  # Chinese: the other variant's share of variant-specific characters
    variant_min: int = 3
    short_response: int = 3  # too short: fewer words than this (x2 characters for ja / zh) ...
    long_prompt: int = 50  # ... for a prompt of at least this many words (x2 characters for ja / zh)
    refusal_window: int = 300
    allow_think_block: bool = True  # a response may open with one whole <think>...</think> (+ one <answer>)
    repetition: RepetitionRules = field(default_factory=RepetitionRules)


@dataclass(frozen=True)
class Verdict:
    rule: str
    reason: Reason
    field: str
    span: str = ""  # the matched text (at most SPAN_CHARS)
    start: int = -1  # its offset in the field's text
    detail: str = ""

    def describe(self) -> str:
        where = f" at {self.start}" if self.start >= 0 else ""
        return (f"rule {self.rule}: {self.reason} in {self.field}{where}"
                + (f" ({self.detail})" if self.detail else "") + (f": {self.span!r}" if self.span else ""))


@dataclass
class _Text:
    """A field's text and what the language rules read from it, computed once when first needed."""

    text: str
    min_letters: int
    _prose: str | None = None
    _scripts: Scripts | None = None
    _lower: str | None = None
    _coarse: str | None = None
    _lang: str | None = None

    @property
    def prose(self) -> str:
        """The text without code, URLs, LaTeX; its first PROSE_CHARS characters (a 30-page context's
        language and scripts are read from its start, as the ingest's language id does)."""
        if self._prose is None:
            self._prose = prose(self.text[:PROSE_CHARS])
        return self._prose

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = count_scripts(self.prose)
        return self._scripts

    @property
    def coarse(self) -> str:
        """ja / zh / ko / latin / cyrillic / other / und, from scripts alone."""
        if self._coarse is None:
            self._coarse = coarse_language(self.scripts)
        return self._coarse

    @property
    def lang(self) -> str:
        """ISO 639-1 (py3langid within a script family)."""
        if self._lang is None:
            self._lang = language(self.prose, self.coarse, self.scripts.letters, self.min_letters)
        return self._lang


def unclosed_fence(text: str) -> tuple[str, int] | None:
    """The opening line of a code fence that is never closed (CommonMark: ``` or ~~~, closed by the
    same character, at least as many, nothing after it)."""
    if "```" not in text and "~~~" not in text:
        return None
    open_line, marker, pos, offset = None, "", -1, 0
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            fence, info = m.group(1), m.group(2)
            if open_line is None:
                open_line, marker, pos = line, fence, offset
            elif fence[0] == marker[0] and len(fence) >= len(marker) and not info.strip():
                open_line = None
        offset += len(line) + 1
    return (open_line[:SPAN_CHARS], pos) if open_line is not None else None


def stray_reasoning_tag(text: str, lists: PhraseLists, allow_blocks: bool) -> re.Match | None:
    """The first reasoning tag (<think>, </answer>, ...) that is not part of an allowed whole block: one
    leading <think>...</think> and one <answer>...</answer> (when `allow_blocks`)."""
    tags = list(lists.reasoning_tags.finditer(text))
    if not tags:
        return None
    allowed = []
    if allow_blocks:
        for block in lists.reasoning_blocks:
            m = block.search(text)
            if m:
                allowed.append((m.start(), m.end()))
    return next((m for m in tags if not any(a <= m.start() < b for a, b in allowed)), None)


@dataclass(frozen=True)
class Row:
    """What the rules see of one row."""

    prompt: str
    fields: tuple[tuple[str, str | None, str], ...]  # (field, text, role)
    finish_reason: str | None = None


class Checker:
    """The active rules over rows: `check(row)` gives every active rule's verdict (for the first field
    that fails it), in RULES order."""

    def __init__(self, lists: PhraseLists, thresholds: Thresholds, active: frozenset[str] | set[str]):
        unknown = sorted(set(active) - set(RULES))
        if unknown:
            raise ValueError(f"unknown hygiene rule {', '.join(unknown)}; the rules: {', '.join(RULES)}")
        self.lists, self.th, self.active = lists, thresholds, frozenset(active)
        self._checks = {"empty": self._empty, "format_tokens": self._format_tokens,
                        "unclosed_fence": self._unclosed_fence, "identity": self._identity,
                        "knowledge_cutoff": self._knowledge_cutoff, "refusal": self._refusal,
                        "repetition": self._repetition, "language": self._language, "script": self._script,
                        "length": self._length}

    def check(self, row: Row) -> list[Verdict]:
        found: dict[str, Verdict] = {}
        prompt = _Text(row.prompt or "", self.th.min_letters)
        for name, text, role in row.fields:
            rules = [r for r in RULES if r in self.active and r in ROLE_RULES[role] and r not in found]
            t = _Text(text or "", self.th.min_letters)
            for rule in rules:
                verdict = self._checks[rule](name, t, prompt)
                if verdict is not None:
                    found[rule] = verdict
                    if rule == "empty":
                        break  # nothing else to read in an empty answer
        if "truncated" in self.active and row.finish_reason == "length":
            found["truncated"] = Verdict("truncated", Reason.CUT_AT_LENGTH_LIMIT, "finish_reason", "length",
                                         detail="the generation stopped at its token limit")
        return [found[r] for r in RULES if r in found]

    # --- the text rules
    def _empty(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        if t.text.strip():
            return None
        return Verdict("empty", Reason.EMPTY_RESPONSE, name, detail=f"{len(t.text)} characters, all white space")

    def _match(self, rule: str, reason: Reason, name: str, rx: re.Pattern, text: str,
               keywords: tuple[str, ...] = (), lower: str = "") -> Verdict | None:
        if keywords and not any(k in lower for k in keywords):
            return None
        m = rx.search(text)
        return Verdict(rule, reason, name, m.group(0)[:SPAN_CHARS], m.start()) if m else None

    def _format_tokens(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        if "<" not in t.text and "[" not in t.text:
            return None
        verdict = self._match("format_tokens", Reason.FORMAT_TOKENS, name, self.lists.format_tokens, t.text)
        if verdict is not None or "<" not in t.text:
            return verdict
        m = stray_reasoning_tag(t.text, self.lists, self.th.allow_think_block)
        return Verdict("format_tokens", Reason.FORMAT_TOKENS, name, m.group(0), m.start(),
                       "a reasoning tag outside one whole leading block") if m else None

    def _unclosed_fence(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        hit = unclosed_fence(t.text)
        return Verdict("unclosed_fence", Reason.UNCLOSED_FENCE, name, hit[0], hit[1]) if hit else None

    def _identity(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        return self._match("identity", Reason.IDENTITY_LEAK, name, self.lists.identity, t.text,
                           self.lists.keywords["identity"], t.lower)

    def _knowledge_cutoff(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        return self._match("knowledge_cutoff", Reason.KNOWLEDGE_CUTOFF, name, self.lists.knowledge_cutoff, t.text,
                           self.lists.keywords["knowledge_cutoff"], t.lower)

    def _refusal(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        window = self.th.refusal_window
        return self._match("refusal", Reason.REFUSAL, name, self.lists.refusal, t.text[:window],
                           self.lists.keywords["refusal"], t.lower[:window])

    def _repetition(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        hit = find_repetition(t.text, self.th.repetition)
        if hit is None:
            return None
        reason, block, detail = hit
        return Verdict("repetition", reason, name, block[:SPAN_CHARS], t.text.find(block), detail)

    # --- the language rules
    def _language(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        pc, tc = p.coarse, t.coarse
        if pc == UND or tc == UND:
            return None
        if pc == tc:
            if pc in ("ja", "zh", "ko") or (plainly_english(p.prose) and plainly_english(t.prose)):
                return None
            if p.lang == UND or t.lang == UND or p.lang == t.lang:
                return None
        if self.lists.translation.search(p.text):
            return None
        pl, tl = (x.lang if x.lang != UND else x.coarse for x in (p, t))
        return Verdict("language", Reason.LANGUAGE_MISMATCH, name, t.prose.strip()[:SPAN_CHARS], -1,
                       f"prompt {pl}, response {tl}")

    def _script(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        expected = p.coarse if p.coarse != UND else t.coarse
        if expected == UND or not t.scripts.letters:
            return None
        verdict = self._foreign_script(name, t, p, expected)
        if verdict is not None and self.lists.translation.search(p.text):
            verdict = None  # a prompt that asks for another language may get both scripts back
        if verdict is None and expected == "ja" and t.coarse == "ja":
            verdict = self._japanese(name, t, p)
        if verdict is None and expected == "zh" and t.coarse == "zh":
            verdict = self._chinese_variant(name, t, p)
        return verdict

    def _foreign_script(self, name: str, t: _Text, p: _Text, expected: str) -> Verdict | None:
        sc, allowed = t.scripts, expected_scripts(expected, p.scripts.present())
        foreign = {s: n for s in sc.present() if s not in allowed for n in [getattr(sc, s)]}
        n = sum(foreign.values())
        if n < self.th.foreign_script_min or n < self.th.foreign_script_share * sc.letters:
            return None
        first = min((m for s in foreign if s in _RUNS for m in [_RUNS[s].search(t.prose)] if m),
                    key=lambda m: m.start(), default=None)
        detail = f"{n} of {sc.letters} letters outside {'/'.join(sorted(allowed))} ({expected}): " + \
            ", ".join(f"{s} {k}" for s, k in sorted(foreign.items()))
        return Verdict("script", Reason.FOREIGN_SCRIPT, name, first.group(0)[:SPAN_CHARS] if first else "", -1, detail)

    def _japanese(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        sc = t.scripts
        found = foreign_han(t.prose)
        if found and p.scripts.han:  # characters the prompt itself writes are the user's, not a leak
            asked = {m.group(0) for m in foreign_han(p.prose)}
            found = [m for m in found if m.group(0) not in asked]
        count = len(found)
        if count >= self.th.foreign_hanzi_min and count >= self.th.foreign_hanzi_share * sc.han:
            first = found[0]
            return Verdict("script", Reason.FOREIGN_HANZI, name, t.prose[max(0, first.start() - 10): first.end() + 10],
                           -1, f"{count} of {sc.han} Han characters are not Japanese (outside JIS X 0208 / cp932)")
        if sc.han >= self.th.kana_min_han and sc.kana_share < self.th.min_kana_share:
            return Verdict("script", Reason.LOW_KANA_SHARE, name, t.prose.strip()[:SPAN_CHARS], -1,
                           f"kana {sc.kana_share:.0%} of kana + Han ({sc.kana} / {sc.kana + sc.han})")
        return None

    def _chinese_variant(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        ps, pt = chinese_variant(p.prose)
        rs, rt = chinese_variant(t.prose)
        want = "Simplified" if ps > pt else "Traditional" if pt > ps else None
        other = rt if want == "Simplified" else rs if want == "Traditional" else min(rs, rt)
        if other < self.th.variant_min or other < self.th.variant_share * (rs + rt):
            return None
        return Verdict("script", Reason.CHINESE_VARIANT, name, t.prose.strip()[:SPAN_CHARS], -1,
                       f"prompt {want or 'without variant-specific characters'}; response {rs} Simplified-only, "
                       f"{rt} Traditional-only characters")

    def _length(self, name: str, t: _Text, p: _Text) -> Verdict | None:
        p_units, r_units = length_units(p.text, p.coarse), length_units(t.text, t.coarse)
        p_need = self.th.long_prompt * (2 if p.coarse in CHAR_LANGUAGES else 1)
        r_need = self.th.short_response * (2 if t.coarse in CHAR_LANGUAGES else 1)
        if p_units < p_need or r_units >= r_need:
            return None
        unit, p_unit = ("characters" if lang in CHAR_LANGUAGES else "words" for lang in (t.coarse, p.coarse))
        return Verdict("length", Reason.TOO_SHORT_FOR_PROMPT, name, t.text.strip()[:SPAN_CHARS], -1,
                       f"{r_units} {unit} (under {r_need}) for a prompt of {p_units} {p_unit}")
