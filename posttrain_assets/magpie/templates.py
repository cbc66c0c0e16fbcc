"""Magpie's pre-query templates (data: templates/pre_query_templates.yaml) and the reject rules for
the instructions a model writes from them. Pure: no dagster, no model.

A pre-query template is a chat template up to where the user's message would start; completed
raw, an aligned chat model writes a user query (Magpie). Per family the file holds the plain
template, a `system_template` (the same with a `{system}` slot) that renders the variants (domain /
language system turns, whose texts sit under `templates.<language>`), the stop strings and the
chat template's special tokens. `load_templates` validates the file; a bad file raises
`TemplateError` naming the file, the family or variant, and the field, e.g.

    pre_query_templates.yaml: family 'llama3': field 'system_template': must contain '{system}' once

Reject rules (`instruction_issue`, first match wins):

- `empty`: nothing left after `clean_instruction` (blank text, or only a leading "user" line);
- `truncated`: `finish_reason == "length"`: no stop string or stop token was reached, so the query
  was cut at the token limit;
- `template_echo`: the text holds a piece of a chat template: a marker of any family (e.g.
  "<|im_start|>", "<|start_header_id|>", "[INST]", "<start_of_turn>"), a marker's identifier when it
  has an underscore ("im_start", "start_header_id", "eot_id", ...), any "<|name|>" special-token
  shape; or its first line (after cleaning) is a bare role word ("assistant", "model", "system",
  "user", optionally with ":"); or it repeats a sentence (16+ characters, case and whitespace
  ignored) of the system turn the template rendered.

`clean_instruction` strips surrounding whitespace, then drops ONE leading line that is only the
role word "user" (any case, optionally followed by ":", spaces or tabs), e.g. "user\\nHow do I ...",
"User:\\nHow do I ...", and strips again. Nothing else is changed: "User: How do I ..." on one
line is kept as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from resources.reasons import Reason

TEMPLATES_FILE = Path(__file__).parent / "templates" / "pre_query_templates.yaml"
TASK = "pre_query_templates"
SYSTEM_SLOT = "{system}"
#: the built-in variant that renders a family's `default_system` (families that have one)
DEFAULT_SYSTEM = "default_system"
#: the language blocks `templates` must have (house rule: every task template has en and ja)
LANGUAGES = ("en", "ja")

VARIANT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
FAMILY_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
TOP_FIELDS = ("task", "version", "templates", "families")
FAMILY_REQUIRED = ("pre_query_template", "system_template", "stop", "markers", "variants")
FAMILY_OPTIONAL = ("models", "upstream", "default_system", "stop_token_ids", "stop_assistant")

ROLE_WORDS = ("assistant", "model", "system", "user")
#: a leading line that is only the role word "user" (what clean_instruction drops)
_LEADING_USER = re.compile(r"user[ \t]*:?[ \t]*(?:\n|\Z)", re.IGNORECASE)
#: the "<|name|>" shape of ChatML / Llama-3 / Phi-3 special tokens
_SPECIAL_TOKEN = re.compile(r"<\|[^|\s<>]{1,40}\|>")
#: sentence ends (Latin and Japanese) and line breaks split a system text into sentences
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*|\n+")
MIN_ECHO_CHARS = 16


class TemplateError(ValueError):
    """The templates file is malformed, or a family / variant is unknown."""


@dataclass(frozen=True)
class Variant:
    name: str
    language: str
    system: str  # the system-turn text


@dataclass(frozen=True)
class Family:
    name: str
    pre_query_template: str
    system_template: str
    default_system: Optional[str]
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    stop_assistant: tuple[str, ...]
    markers: tuple[str, ...]
    variants: tuple[str, ...]
    models: tuple[str, ...]
    upstream: Optional[str]

    def render(self, system: str) -> str:
        """The pre-query template with `system` as the system turn (plain substitution)."""
        return self.system_template.replace(SYSTEM_SLOT, system)


@dataclass(frozen=True)
class PreQueryTemplates:
    version: str
    families: dict[str, Family]
    variants: dict[str, Variant]
    source: str = TEMPLATES_FILE.name

    # -- lookups ---------------------------------------------------------------------------------
    def family(self, name: str) -> Family:
        try:
            return self.families[name]
        except KeyError:
            raise TemplateError(f"unknown family {name!r} (known: {', '.join(self.families)})") from None

    def variant_names(self, family: str) -> list[str]:
        """The variants `family` renders (`default_system` last, when the family has one)."""
        fam = self.family(family)
        return list(fam.variants) + ([DEFAULT_SYSTEM] if fam.default_system is not None else [])

    def system_prompt(self, family: str, variant: Optional[str] = None) -> Optional[str]:
        """The system-turn text the pre-query template of (family, variant) holds; None if none."""
        fam = self.family(family)
        if variant is None:
            ds = fam.default_system
            return ds if ds is not None and ds in fam.pre_query_template else None
        if variant not in self.variant_names(family):
            raise TemplateError(f"family {family!r} has no variant {variant!r} "
                                f"(variants: {', '.join(self.variant_names(family))})")
        return fam.default_system if variant == DEFAULT_SYSTEM else self.variants[variant].system

    def language(self, variant: Optional[str] = None) -> str:
        """The language a variant asks the query in (`en` for the plain and default templates)."""
        if variant is None or variant == DEFAULT_SYSTEM:
            return "en"
        if variant not in self.variants:
            raise TemplateError(f"unknown variant {variant!r} (known: {', '.join(self.variants)})")
        return self.variants[variant].language

    def pre_query(self, family: str, variant: Optional[str] = None) -> str:
        """The text to complete raw: the plain template, or the variant's system turn rendered."""
        fam = self.family(family)
        if variant is None:
            return fam.pre_query_template
        return fam.render(self.system_prompt(family, variant))

    def stops(self, family: str, include_assistant: bool = False) -> list[str]:
        """The family's stop strings (upstream's stop_tokens); with `include_assistant`, also
        upstream's stop_tokens_assistant (e.g. "assistant"), which upstream's gen_ins.py appends but
        which also cuts any query that uses the word."""
        fam = self.family(family)
        return list(fam.stop) + (list(fam.stop_assistant) if include_assistant else [])

    # -- reject rules ----------------------------------------------------------------------------
    @property
    def echo_pieces(self) -> tuple[str, ...]:
        """Markers of every family, and their identifiers that hold an underscore."""
        pieces: dict[str, None] = {}
        for fam in self.families.values():
            for m in fam.markers:
                pieces[m] = None
                ident = m.strip("<>|[]/ ")
                if "_" in ident:
                    pieces[ident] = None
        return tuple(pieces)

    def instruction_issue(self, text: Optional[str], finish_reason: Optional[str], family: str,
                          variant: Optional[str] = None) -> Optional[str]:
        """Why a generated instruction is rejected (`empty`, `truncated`, `template_echo`), or None."""
        system = self.system_prompt(family, variant)  # validates family and variant
        raw = text or ""
        cleaned = clean_instruction(raw)
        if not cleaned:
            return Reason.EMPTY
        if finish_reason == "length":
            return Reason.TRUNCATED
        if any(p in raw for p in self.echo_pieces) or _SPECIAL_TOKEN.search(raw):
            return Reason.TEMPLATE_ECHO
        first = cleaned.split("\n", 1)[0].strip().rstrip(":").strip().casefold()
        if first in ROLE_WORDS:
            return Reason.TEMPLATE_ECHO
        if system and _repeats(cleaned, system):
            return Reason.TEMPLATE_ECHO
        return None


def clean_instruction(text: Optional[str]) -> str:
    """Strip surrounding whitespace and drop one leading line that is only the role word "user"
    (any case, optional ":"); see the module docstring."""
    t = (text or "").strip()
    m = _LEADING_USER.match(t)
    if m:
        t = t[m.end():].strip()
    return t


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _repeats(text: str, system: str) -> bool:
    """True when `text` holds a sentence of `system` (MIN_ECHO_CHARS+ characters, case and
    whitespace ignored)."""
    t = _norm(text)
    for sentence in _SENTENCE_END.split(system):
        s = _norm(sentence)
        if len(s) >= MIN_ECHO_CHARS and s in t:
            return True
    return False


# -- loading and validation ------------------------------------------------------------------------
def _str_list(value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not allow_empty) \
            or not all(isinstance(v, str) and v for v in value):
        raise TemplateError(f"{where}: must be a {'' if allow_empty else 'non-empty '}list of non-empty strings")
    return tuple(value)


def _parse_variants(templates: Any, src: str) -> dict[str, Variant]:
    if not isinstance(templates, dict):
        raise TemplateError(f"{src}: field 'templates': must be a mapping of language -> variants")
    missing = [lang for lang in LANGUAGES if lang not in templates]
    if missing:
        raise TemplateError(f"{src}: field 'templates': missing language(s) {', '.join(missing)}")
    out: dict[str, Variant] = {}
    for lang, block in templates.items():
        if not isinstance(block, dict) or not block:
            raise TemplateError(f"{src}: field 'templates.{lang}': must be a non-empty mapping of variant -> system text")
        for name, system in block.items():
            where = f"{src}: variant {name!r} (templates.{lang})"
            if not isinstance(name, str) or not VARIANT_RE.match(name) or name == DEFAULT_SYSTEM:
                raise TemplateError(f"{where}: bad name (lowercase words joined by '.', not {DEFAULT_SYSTEM!r})")
            if name in out:
                raise TemplateError(f"{where}: also defined under templates.{out[name].language}")
            if not isinstance(system, str) or not system.strip():
                raise TemplateError(f"{where}: the system text must be a non-empty string")
            out[name] = Variant(name=name, language=str(lang), system=system)
    return out


def _parse_family(name: Any, spec: Any, variants: dict[str, Variant], src: str) -> Family:
    if not isinstance(name, str) or not FAMILY_RE.match(name):
        raise TemplateError(f"{src}: family {name!r}: bad name (lowercase letters, digits, '_', '.', '-')")
    fam = f"{src}: family {name!r}"
    if not isinstance(spec, dict):
        raise TemplateError(f"{fam}: must be a mapping of fields")
    unknown = [k for k in spec if k not in FAMILY_REQUIRED + FAMILY_OPTIONAL]
    if unknown:
        raise TemplateError(f"{fam}: unknown field(s) {', '.join(map(repr, unknown))} "
                            f"(allowed: {', '.join(FAMILY_REQUIRED + FAMILY_OPTIONAL)})")
    for k in FAMILY_REQUIRED:
        if k not in spec:
            raise TemplateError(f"{fam}: field {k!r}: missing")

    def field(k: str) -> str:
        return f"{fam}: field {k!r}"

    pre = spec["pre_query_template"]
    if not isinstance(pre, str) or not pre:
        raise TemplateError(f"{field('pre_query_template')}: must be a non-empty string")
    sys_t = spec["system_template"]
    if not isinstance(sys_t, str) or sys_t.count(SYSTEM_SLOT) != 1:
        raise TemplateError(f"{field('system_template')}: must be a string that contains {SYSTEM_SLOT!r} once")
    default_system = spec.get("default_system")
    if default_system is not None and (not isinstance(default_system, str) or not default_system.strip()):
        raise TemplateError(f"{field('default_system')}: must be a non-empty string or null")
    if default_system and default_system in pre and sys_t.replace(SYSTEM_SLOT, default_system) != pre:
        raise TemplateError(f"{field('pre_query_template')}: holds default_system but differs from "
                            f"system_template rendered with it")
    ids = spec.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise TemplateError(f"{field('stop_token_ids')}: must be a list of non-negative integers")
    names = _str_list(spec["variants"], field("variants"), allow_empty=True)
    for v in names:
        if v not in variants:
            raise TemplateError(f"{fam}: variant {v!r} (field 'variants'): unknown variant "
                                f"(known: {', '.join(variants)})")
    if len(set(names)) != len(names):
        raise TemplateError(f"{field('variants')}: lists a variant twice")
    upstream = spec.get("upstream")
    if upstream is not None and (not isinstance(upstream, str) or not upstream):
        raise TemplateError(f"{field('upstream')}: must be a model id or null")
    return Family(
        name=name, pre_query_template=pre, system_template=sys_t, default_system=default_system,
        stop=_str_list(spec["stop"], field("stop")), stop_token_ids=tuple(ids),
        stop_assistant=_str_list(spec.get("stop_assistant") or [], field("stop_assistant"), allow_empty=True),
        markers=_str_list(spec["markers"], field("markers")), variants=names,
        models=_str_list(spec.get("models") or [], field("models"), allow_empty=True), upstream=upstream)


def parse_templates(data: Any, source: str = TEMPLATES_FILE.name) -> PreQueryTemplates:
    """Validate the loaded YAML of a templates file."""
    src = source
    if not isinstance(data, dict):
        raise TemplateError(f"{src}: must be a mapping with {', '.join(TOP_FIELDS)}")
    unknown = [k for k in data if k not in TOP_FIELDS]
    if unknown:
        raise TemplateError(f"{src}: unknown field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(TOP_FIELDS)})")
    missing = [k for k in TOP_FIELDS if k not in data]
    if missing:
        raise TemplateError(f"{src}: missing field(s) {', '.join(missing)}")
    if data["task"] != TASK:
        raise TemplateError(f"{src}: field 'task': must be {TASK!r}, not {data['task']!r}")
    version = data["version"]
    if not isinstance(version, str) or not version.strip():
        raise TemplateError(f"{src}: field 'version': must be a non-empty quoted string, e.g. \"1\"")
    variants = _parse_variants(data["templates"], src)
    fams = data["families"]
    if not isinstance(fams, dict) or not fams:
        raise TemplateError(f"{src}: field 'families': must be a non-empty mapping of family -> fields")
    families = {name: _parse_family(name, spec, variants, src) for name, spec in fams.items()}
    return PreQueryTemplates(version=version, families=families, variants=variants, source=src)


def load_templates(path: str | Path | None = None) -> PreQueryTemplates:
    """Load and validate a templates file (default: the bundled templates/pre_query_templates.yaml)."""
    p = Path(path) if path is not None else TEMPLATES_FILE
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TemplateError(f"{p.name}: not valid YAML: {exc}") from None
    return parse_templates(data, source=p.name)


@lru_cache(maxsize=1)
def default_templates() -> PreQueryTemplates:
    """The bundled templates, loaded once."""
    return load_templates()


# -- the bundled templates, as functions ------------------------------------------------------------
def families() -> list[str]:
    return list(default_templates().families)


def variants(family: str) -> list[str]:
    return default_templates().variant_names(family)


def pre_query(family: str, variant: Optional[str] = None) -> str:
    return default_templates().pre_query(family, variant)


def system_prompt(family: str, variant: Optional[str] = None) -> Optional[str]:
    return default_templates().system_prompt(family, variant)


def stops(family: str, include_assistant: bool = False) -> list[str]:
    return default_templates().stops(family, include_assistant)


def instruction_issue(text: Optional[str], finish_reason: Optional[str], family: str,
                      variant: Optional[str] = None) -> Optional[str]:
    return default_templates().instruction_issue(text, finish_reason, family, variant)
