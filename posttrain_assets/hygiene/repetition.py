"""Repetition in one response: open-instruct's rules (scripts/data/filtering_and_updates/
filter_ngram_repetitions.py, `detect_exact_block_repetition`) plus a duplicated n-gram share
(Gopher / datatrove's `dup_n_grams`), counted in characters for Japanese and Chinese.

open-instruct's rules, with its function's default thresholds:
- a paragraph (split on blank lines) repeated `paragraph_repeats` (10) times or more; non-consecutive
  repeats need twice as many (at most 30); paragraphs under 20 characters repeated non-consecutively,
  code lines (import / return / def ...) and math expressions are skipped;
- a sentence repeated `consecutive_sentence_repeats` (4) times in a row (at least 5 characters), or
  `sentence_repeats` (40) times anywhere (at least 10 characters); a single word is no sentence;
- thresholds x2 for math / code content and x3 for a text that is a structured list (x4 for a
  multi-line paragraph), as open-instruct scales them.
Sentences end at . ! ? and, for Japanese and Chinese, at 。！？ (open-instruct splits on . ! ? only,
which makes one sentence of a whole Japanese paragraph). A sentence's size is its tokens (words, and
every Japanese / Chinese character one token), so "one word" means the same in every language.

The n-gram share: the share of the text's tokens inside `ngram_n`-grams (10 words) seen before in it
(Gopher's `find_all_duplicate`), above `ngram_share` (0.3), on texts of at least `ngram_min_tokens`
(100) tokens. Tokens are words, or characters for Japanese / Chinese, where n is doubled (20
characters ~ 10 words). Math / code / list texts get the threshold x1.5. Gopher's own thresholds (0.15
for 5-grams .. 0.10 for 10-grams) are for web documents: on the bundled sources they dropped 6% of
OpenAssistant's human answers (a workout plan's "Sets of 8-12 reps", a song's chorus); at 10-grams and
0.3 what is left is a paragraph or list entry written twice.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from resources.reasons import Reason

from ..common.tokens import CJK_RE, tokenize

_SENTENCE_END = re.compile(r"[.!?。！？]+")
_NUMBERED = re.compile(r"^\d+\.\s")
_BULLET = re.compile(r"^[-*•]\s")
_CODE_LINE = re.compile(r"^(?:import\s|from\s+\w+\s+import|return\b|for\s|while\s|if\s|def\s|class\s|\w+\.\w+\(|"
                        r"\w+\s*[-+*/]?=\s*\w+\()", re.I)
_MATH = re.compile(r"[=+*/^\\{}<>|]|\d\s*[-+*/]\s*\d|\w+\(")
_COMPLEX_MATH = re.compile(r"math\.\w+\(|\w+\*\*\d+|\d+\s*[-+*/]\s*\d+|lambda\s+[^:]+:|\[[^\]]*\bfor\b[^\]]*\]")
_TRANSITIONS = {"alternatively,", "therefore,", "however,"}


@dataclass(frozen=True)
class RepetitionRules:
    paragraph_repeats: int = 10
    sentence_repeats: int = 40
    consecutive_sentence_repeats: int = 4
    ngram_n: int = 10
    ngram_share: float = 0.3
    ngram_min_tokens: int = 100


def _structured(text: str) -> bool:
    lines = [ln.strip() for ln in text.split("\n")]
    return sum(1 for ln in lines if _NUMBERED.match(ln)) >= 2 or sum(1 for ln in lines if _BULLET.match(ln)) >= 2


def _runs(items: list[str], min_chars: int) -> dict[str, tuple[int, int]]:
    """item -> (total occurrences, longest consecutive run) for items of >= min_chars seen twice or more."""
    total, longest, run, prev = Counter(), Counter(), 0, None
    for item in items:
        run = run + 1 if item == prev else 1
        prev = item
        if len(item) >= min_chars:
            total[item] += 1
            longest[item] = max(longest[item], run)
    return {k: (n, longest[k]) for k, n in total.items() if n > 1}


def _skip(block: str) -> bool:
    return bool(_CODE_LINE.match(block)) or bool(_COMPLEX_MATH.search(block)) or block.lower() in _TRANSITIONS


def repeated_paragraph(text: str, rules: RepetitionRules, structured: bool) -> tuple[str, int] | None:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    for para, (total, consecutive) in _runs(paragraphs, 10).items():
        if (consecutive == 1 and len(para) < 20) or _skip(para):
            continue
        mult = max(3 if structured else 1, 4 if "\n" in para else 1, 2 if _MATH.search(para) else 1)
        need = rules.paragraph_repeats * mult
        if consecutive == 1:
            need = min(need * 2, 30)
        if total >= need:
            return para, total
    return None


def repeated_sentence(text: str, rules: RepetitionRules, structured: bool) -> tuple[str, int] | None:
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    for sent, (total, consecutive) in _runs(sentences, 5).items():
        if len(tokenize(sent)) <= 1 or _skip(sent):
            continue
        mult = max(2 if _MATH.search(sent) else 1, 3 if structured else 1)
        if consecutive >= rules.consecutive_sentence_repeats * mult:
            return sent, consecutive
        if total >= rules.sentence_repeats * mult and len(sent) >= 10:
            return sent, total
    return None


def duplicated_ngrams(text: str, rules: RepetitionRules, structured: bool) -> tuple[str, float] | None:
    """(the first repeated n-gram, the share of tokens in repeated n-grams) when above the threshold."""
    tokens = tokenize(text)
    if len(tokens) < rules.ngram_min_tokens:
        return None
    cjk = sum(1 for t in tokens if len(t) == 1 and CJK_RE.match(t)) * 2 >= len(tokens)
    limit = rules.ngram_share * (1.5 if (structured or _MATH.search(text)) else 1)
    share, first = _dup_share(tokens, rules.ngram_n * 2 if cjk else rules.ngram_n)
    if share > limit:
        return ("" if cjk else " ").join(first), share
    return None


def _dup_share(tokens: list[str], n: int) -> tuple[float, tuple]:
    """Gopher's find_all_duplicate: walk the n-grams; an n-gram seen before covers its n tokens (the
    walk jumps past it)."""
    seen, dup, i, first = set(), 0, 0, ()
    while i + n <= len(tokens):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            dup += n
            first = first or gram
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup / len(tokens), first


def find_repetition(text: str, rules: RepetitionRules) -> tuple[Reason, str, str] | None:
    """(reason, the repeated block, detail) of the first repetition rule the text fails, else None."""
    structured = _structured(text)
    hit = repeated_paragraph(text, rules, structured)
    if hit:
        return Reason.REPEATED_PARAGRAPH, hit[0], f"paragraph x{hit[1]}"
    hit = repeated_sentence(text, rules, structured)
    if hit:
        return Reason.REPEATED_SENTENCE, hit[0], f"sentence x{hit[1]}"
    hit = duplicated_ngrams(text, rules, structured)
    if hit:
        return Reason.REPEATED_NGRAMS, hit[0], f"{hit[1]:.0%} of tokens in repeated n-grams"
    return None
