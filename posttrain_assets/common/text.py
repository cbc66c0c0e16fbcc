"""Text normalisation and length shared by the stages (exact dedup keys, string answer comparison, the
length rules of evolution, the tag filter and hygiene)."""

import hashlib
import unicodedata


def normalize_text(text: str) -> str:
    """The exact-duplicate form: Unicode NFKC, case-folded, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


#: languages whose length is counted in characters, not whitespace words
CHAR_LANGUAGES = frozenset({"ja", "zh"})


def is_char_language(language: str | None) -> bool:
    return (language or "").split("-")[0] in CHAR_LANGUAGES


def length_units(text: str, language: str | None) -> int:
    """Characters (without white space) for Japanese / Chinese, whitespace-separated words otherwise."""
    if is_char_language(language):
        return sum(1 for ch in text if not ch.isspace())
    return len(text.split())
