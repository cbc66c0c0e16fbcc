"""The tagging stage's model tasks (templates/*.yaml, versioned, en + ja) and the parsers of their answers.

JSON tasks (Magpie's unitag missions; the chat path, `session.run`):

    input_quality  tag_input_quality.yaml  {"explanation", "input_quality": very poor .. excellent}
    difficulty     tag_difficulty.yaml     {"intent", "knowledge", "difficulty": very easy .. very hard}
    task_category  tag_task_category.yaml  {"primary_tag": one of Magpie's 12, "other_tags": [...]}
    safety         tag_safety_judge.yaml   {"safety": safe|unsafe, "category": none|S1..S14}  (no guard model)

Every JSON answer is parsed the same way (`parse_tag_answer`): the first {...} of the answer, enum
values matched case-insensitively to their canonical spelling ("Good" -> "good", "coding & debugging"
-> "Coding & Debugging"), then validated against the task's schema. A failure is a `TaskParseError`
whose message starts with `SCHEMA_VIOLATION` when the JSON parsed but broke the schema (a value
outside the enum, a missing key), so the stage can count `parse_failed` and `schema_violation`
apart. Nothing is ever defaulted.

The guard (`safety_llama_guard.yaml`): Llama Guard 3's raw prompt, completed (`session.complete`);
`parse_guard_output` reads "safe" / "unsafe\\nS1,S10".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from resources.llm.tasks import Task, TaskParseError, parse_json_answer
from resources.reasons import Reason

TEMPLATES = Path(__file__).parent / "templates"
SCHEMA_VIOLATION = "schema violation"

QUALITY_LEVELS = ("very poor", "poor", "average", "good", "excellent")
DIFFICULTY_LEVELS = ("very easy", "easy", "medium", "hard", "very hard")
TASK_CATEGORIES = ("Information seeking", "Reasoning", "Planning", "Editing", "Coding & Debugging", "Math",
                   "Role playing", "Data analysis", "Creative writing", "Advice seeking", "Brainstorming", "Others")
SAFETY_VALUES = ("safe", "unsafe")


def _yaml(name: str) -> dict:
    return yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text(encoding="utf-8"))


GUARD_SPEC = _yaml("safety_llama_guard")
#: Llama Guard 3's hazard taxonomy: code -> name (S1..S14)
SAFETY_CATEGORIES: dict[str, str] = dict(GUARD_SPEC["categories"])


def _enum_values(schema: dict) -> dict[str, tuple[str, ...]]:
    """property -> its enum (for a string, or for an array's string items)."""
    out = {}
    for name, prop in (schema.get("properties") or {}).items():
        enum = prop.get("enum") or (prop.get("items") or {}).get("enum")
        if enum:
            out[name] = tuple(enum)
    return out


def _canonical(value: Any, allowed: tuple[str, ...]) -> Any:
    if not isinstance(value, str):
        return value
    folded = " ".join(value.split()).casefold()
    for a in allowed:
        if a.casefold() == folded:
            return a
    return value  # left as written: the schema check names it


def parse_tag_answer(text: str, schema: dict) -> dict:
    """The JSON object of a tag answer, enum values in canonical spelling, validated (see the module
    docstring). Raises TaskParseError."""
    enums = _enum_values(schema)

    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            for name, allowed in enums.items():
                if isinstance(value.get(name), list):
                    value[name] = [_canonical(v, allowed) for v in value[name]]
                elif name in value:
                    value[name] = _canonical(value[name], allowed)
        return value

    return parse_json_answer(text, schema, normalize=canonical, violation=SCHEMA_VIOLATION)


def _json_task(name: str, check=None) -> Task:
    schema = _yaml(name)["json_schema"]

    def parse(text: str, row: dict) -> dict:
        value = parse_tag_answer(text, schema)
        if check is not None:
            check(value)
        return value

    return Task.from_file(TEMPLATES / f"{name}.yaml", parse=parse)


def _check_safety(value: dict) -> None:
    if value["safety"] == "unsafe" and value["category"] == "none":
        raise TaskParseError(f"{SCHEMA_VIOLATION} at category: an unsafe verdict needs a category S1-S14, got 'none'")


QUALITY = _json_task("tag_input_quality")
DIFFICULTY = _json_task("tag_difficulty")
CATEGORY = _json_task("tag_task_category")
SAFETY_JUDGE = _json_task("tag_safety_judge", _check_safety)
#: the guard's prompt as a Task (its version and per-language text; rendered raw by `guard_prompt`)
GUARD = Task.from_file(TEMPLATES / "safety_llama_guard.yaml", parse=lambda text, row: parse_guard_output(text))

_GUARD_LINE = re.compile(r"^S(\d{1,2})$")


def parse_guard_output(text: str) -> tuple[str, Optional[str]]:
    """Llama Guard's answer -> ("safe", None) or ("unsafe", "S1,S10"). The first non-empty line is
    the verdict (any letter case); an unsafe verdict needs a second line of known categories
    (comma-separated, each S1..S14). Anything else raises TaskParseError."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        raise TaskParseError("empty guard answer")
    verdict = lines[0].casefold()
    if verdict == "safe":
        if len(lines) > 1:
            raise TaskParseError(f"a 'safe' verdict followed by more lines: {text.strip()[:80]!r}")
        return "safe", None
    if verdict != "unsafe":
        raise TaskParseError(f"the first line must be 'safe' or 'unsafe', got {lines[0][:80]!r}")
    if len(lines) < 2:
        raise TaskParseError("an 'unsafe' verdict without a category line")
    codes = [c.strip().upper() for c in lines[1].split(",") if c.strip()]
    bad = [c for c in codes if not _GUARD_LINE.match(c) or c not in SAFETY_CATEGORIES]
    if not codes or bad:
        raise TaskParseError(f"unknown category {', '.join(bad) or '(none)'} in {lines[1][:80]!r} "
                             f"(known: S1-S{len(SAFETY_CATEGORIES)})")
    if len(lines) > 2:
        raise TaskParseError(f"more than two lines: {text.strip()[:80]!r}")
    return "unsafe", ",".join(dict.fromkeys(codes))


def _roles(spec: dict, language: str) -> dict:
    roles = spec.get("roles") or {}
    return roles.get(language) or roles["en"]


def conversation_fields(task: Task, spec: dict, instruction: str, response: Optional[str], language: str) -> dict:
    """The fields the safety templates fill: the conversation ("User: ..." [+ "Agent: ..."]), the role
    assessed (the last message's) and the category list."""
    lang = task.language_of({"language": language})
    conv = f"User: {instruction}" + (f"\n\nAgent: {response}" if response is not None else "")
    role = _roles(spec, lang)["agent" if response is not None else "user"]
    cats = "\n".join(f"{code}: {name}." for code, name in SAFETY_CATEGORIES.items())
    return {"conversation": conv, "role": role, "categories": cats, "language": language}


SAFETY_JUDGE_SPEC = _yaml("tag_safety_judge")


def guard_prompt(instruction: str, response: Optional[str], language: str) -> str:
    """The raw Llama Guard 3 prompt of one row (Meta's format; see safety_llama_guard.yaml)."""
    fields = conversation_fields(GUARD, GUARD_SPEC, instruction, response, language)
    return GUARD.templates[GUARD.language_of(fields)]["user"].format(**fields)


def judge_row(instruction: str, response: Optional[str], language: str) -> dict:
    """The row the safety judge task renders."""
    return conversation_fields(SAFETY_JUDGE, SAFETY_JUDGE_SPEC, instruction, response, language)


#: every task that can make a tag, for the metadata / the rows' `tag_versions`
ALL_TASKS = (QUALITY, DIFFICULTY, CATEGORY, SAFETY_JUDGE, GUARD)


def failure_reason(error: str, reason: str) -> str:
    """A session TaskFailure's reason, with schema violations told apart from unparseable answers."""
    if reason == Reason.PARSE_FAILED and error.startswith(SCHEMA_VIOLATION):
        return Reason.SCHEMA_VIOLATION
    return reason
