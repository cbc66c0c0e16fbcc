"""The hygiene stage's phrase lists: versioned YAML (lists.yaml beside this file, or a team's own copy),
compiled once per process. A list that does not load names the file, the list, the language and the
entry that is wrong."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

DEFAULT_PATH = os.path.join(os.path.dirname(__file__), "lists.yaml")
LISTS_ENV = "POSTTRAIN_HYGIENE_LISTS"
LANGUAGES = ("en", "ja", "zh")
#: the lists with en / ja / zh patterns
PHRASE_LISTS = ("identity", "knowledge_cutoff", "refusal", "translation")


class ListsError(ValueError):
    pass


@dataclass(frozen=True)
class PhraseLists:
    path: str
    version: int
    names: re.Pattern  # any model / maker name (the identity rule's cheap first test)
    identity: re.Pattern
    knowledge_cutoff: re.Pattern
    refusal: re.Pattern
    translation: re.Pattern
    format_tokens: re.Pattern
    reasoning_tags: re.Pattern  # any opening / closing reasoning tag
    reasoning_blocks: tuple[re.Pattern, ...]  # a whole block per tag: the first anchored at the start
    counts: dict  # list -> number of patterns (the card lists them)
    keywords: dict  # list -> lower-case literals, one of which a text must hold to be searched (() = always)


def lists_path(path: str | None = None) -> str:
    return path or os.environ.get(LISTS_ENV) or DEFAULT_PATH


def _compile(path: str, where: str, pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ListsError(f"{path}: {where}: not a regular expression ({exc}): {pattern!r}") from None
    return pattern


def _phrase_list(path: str, raw: dict, name: str, names_alt: str) -> tuple[str, int]:
    per_lang = raw.get(name)
    if not isinstance(per_lang, dict) or not per_lang:
        raise ListsError(f"{path}: `{name}` must be a mapping of language -> list of patterns "
                         f"({', '.join(LANGUAGES)} at least)")
    missing = [lang for lang in LANGUAGES if lang not in per_lang]
    if missing:
        raise ListsError(f"{path}: `{name}` has no {', '.join(missing)} patterns")
    parts = []
    for lang, patterns in per_lang.items():
        if lang == "keywords":
            continue
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ListsError(f"{path}: `{name}.{lang}` must be a list of non-empty strings")
        for i, p in enumerate(patterns):
            parts.append(_compile(path, f"{name}.{lang}[{i}]", p.replace("{NAME}", names_alt)))
    return "|".join(f"(?:{p})" for p in parts), len(parts)


@lru_cache(maxsize=8)
def load_lists(path: str | None = None) -> PhraseLists:
    path = lists_path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ListsError(f"hygiene lists {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ListsError(f"hygiene lists {path}: not YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), int):
        raise ListsError(f"{path}: needs an integer `version` and the lists (see {DEFAULT_PATH})")
    names = raw.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ListsError(f"{path}: `names` must be a non-empty list of strings")
    names_alt = "(?:" + "|".join(_compile(path, f"names[{i}]", n) for i, n in enumerate(names)) + ")"
    compiled, counts, keywords = {}, {"names": len(names)}, {}
    for name in PHRASE_LISTS:
        compiled[name], counts[name] = _phrase_list(path, raw, name, names_alt)
        kw = raw[name].get("keywords") or []
        if not all(isinstance(k, str) and k and k == k.lower() for k in kw):
            raise ListsError(f"{path}: `{name}.keywords` must be a list of lower-case strings")
        keywords[name] = tuple(kw)
    tokens = raw.get("format_tokens") or {}
    literal, patterns = tokens.get("literal") or [], tokens.get("patterns") or []
    if not all(isinstance(t, str) and t for t in literal + patterns):
        raise ListsError(f"{path}: `format_tokens.literal` / `.patterns` must be lists of non-empty strings")
    token_parts = [re.escape(t) for t in literal] + [_compile(path, f"format_tokens.patterns[{i}]", p)
                                                      for i, p in enumerate(patterns)]
    counts["format_tokens"] = len(token_parts)
    tags, blocks = _reasoning(path, tokens.get("reasoning") or [])
    counts["reasoning_tags"] = len(blocks)
    return PhraseLists(
        path=path, version=raw["version"], names=re.compile(names_alt, re.I),
        **{k: re.compile(v, re.I) for k, v in compiled.items()},
        format_tokens=re.compile("|".join(token_parts) or "(?!)"), reasoning_tags=tags, reasoning_blocks=blocks,
        counts=counts, keywords=keywords)


def _reasoning(path: str, names: list) -> tuple[re.Pattern, tuple[re.Pattern, ...]]:
    """`<think>`-style tags: any of them, and one whole block per tag (`<think>` with no other `<think>` or
    `</think>` inside; the first tag's block only at the start of the text)."""
    if not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z_][\w-]*", n) for n in names):
        raise ListsError(f"{path}: `format_tokens.reasoning` must be a list of tag names (think, answer)")
    if not names:
        return re.compile("(?!)"), ()
    tags = re.compile("</?(?:" + "|".join(map(re.escape, names)) + ")>")
    blocks = tuple(re.compile(("\\A\\s*" if i == 0 else "") + f"<{n}>(?:(?!</?{n}>).)*</{n}>", re.S)
                   for i, n in enumerate(map(re.escape, names)))
    return tags, blocks
