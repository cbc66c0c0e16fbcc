"""A model task = a prompt template (data: one YAML file per task, a version, a variant per
language) + the parser of the model's answer; the model is injected (distilabel's split).

Template file (`<stage>/templates/<task>.yaml`):

    task: solve_math
    version: "1"            # in every cache key: a new version is a cache miss
    json_schema: null       # or a JSON schema: the answer must be an object of this shape
    defaults: {temperature: 0.7, max_tokens: 256, stop: []}   # optional decoding defaults
    templates:
      en: {system: null, user: "{question}\n\nSolve step by step ..."}
      ja: {system: null, user: "{question}\n\n段階的に解いて ..."}

`user` and `system` are `str.format` templates over the row's fields. A row is rendered in its
`language` (a field of the row, else the task's first language); a language without a variant
falls back to `en`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml


class TaskParseError(ValueError):
    """The model's answer does not have the task's shape."""


def _identity(text: str, row: dict) -> str:
    return text


@dataclass(frozen=True)
class Task:
    name: str
    version: str
    templates: dict  # lang -> {"system": str | None, "user": str}
    parse: Callable[[str, dict], Any] = _identity  # (answer text, row) -> value; raises TaskParseError
    json_schema: Optional[dict] = None
    defaults: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, parse: Optional[Callable[[str, dict], Any]] = None) -> "Task":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        missing = [k for k in ("task", "version", "templates") if k not in data]
        if missing:
            raise ValueError(f"{path}: task file needs {', '.join(missing)}")
        for lang, t in data["templates"].items():
            if not isinstance(t, dict) or not isinstance(t.get("user"), str):
                raise ValueError(f"{path}: templates.{lang}.user must be a string")
        schema = data.get("json_schema")
        if parse is None:
            parse = (lambda text, row: parse_json_answer(text, schema)) if schema else _identity
        return cls(name=data["task"], version=str(data["version"]), templates=data["templates"],
                   parse=parse, json_schema=schema, defaults=data.get("defaults") or {})

    @property
    def languages(self) -> list[str]:
        return list(self.templates)

    def language_of(self, row: dict) -> str:
        lang = row.get("language") or self.languages[0]
        return lang if lang in self.templates else ("en" if "en" in self.templates else self.languages[0])

    def render(self, row: dict) -> list[dict]:
        """The chat messages for one row, in the row's language."""
        t = self.templates[self.language_of(row)]
        try:
            msgs = [{"role": "system", "content": t["system"].format(**row)}] if t.get("system") else []
            msgs.append({"role": "user", "content": t["user"].format(**row)})
        except KeyError as exc:
            raise ValueError(f"task {self.name!r}: the row has no field {exc.args[0]!r} "
                             f"(fields: {', '.join(sorted(row))})") from None
        return msgs

    def key(self) -> dict:
        """What of the task enters the cache key."""
        return {"task": self.name, "version": self.version, "json_schema": self.json_schema}


def extract_json_object(text: str) -> Optional[str]:
    """The first balanced {...} in `text` (strings and escapes respected), or None."""
    start = text.find("{")
    while start >= 0:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def parse_json_answer(text: str, schema: Optional[dict], *, normalize: Optional[Callable[[Any], Any]] = None,
                      violation: str = "does not match the schema") -> dict:
    """Tolerant JSON parsing (prose around the object is ignored) + validation against the schema.
    `normalize` may rewrite the parsed value before validation (e.g. enum spelling); `violation` starts
    the message of a schema mismatch. Raises TaskParseError with the reason."""
    blob = extract_json_object(text)
    if blob is None:
        raise TaskParseError("no JSON object in the answer")
    try:
        value = json.loads(blob)
    except json.JSONDecodeError as exc:
        raise TaskParseError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    if normalize is not None:
        value = normalize(value)
    if schema:
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise TaskParseError(f"{violation} at {where}: {exc.message}") from None
    return value
