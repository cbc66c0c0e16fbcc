"""Tokens by script, the same in every language (decontamination's n-grams, hygiene's repetition rules).

Text is normalised (NFKC, casefold) and cut into tokens by script, not by spaces: a run of letters or
digits of a space-separated script is one token (a word), and every Japanese / Chinese character
(kana, CJK ideographs) is a token of its own. Punctuation and white space are no tokens."""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

#: kana (incl. the prolonged sound mark and small katakana), CJK ideographs (ext. A, compatibility)
CJK_CHARS = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")
CJK_RE = re.compile(f"[{CJK_CHARS}]")


def normalize(text: str) -> str:
    """NFKC (full-width letters and digits, half-width katakana) and casefold."""
    return unicodedata.normalize("NFKC", text or "").casefold()


def tokenize(text: str) -> list[str]:
    """Words of space-separated scripts, single characters of Japanese / Chinese; no punctuation."""
    return TOKEN_RE.findall(normalize(text))


def is_cjk(tokens: Sequence[str]) -> bool:
    """Most tokens are CJK characters: the text is indexed with character n-grams of `cjk_n`."""
    return bool(tokens) and sum(1 for t in tokens if CJK_RE.fullmatch(t)) * 2 >= len(tokens)
