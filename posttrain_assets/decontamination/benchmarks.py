"""The benchmarks registry: the evaluation sets training rows are checked against, as data.

A YAML file (default: `$POSTTRAIN_BENCHMARKS`, else the bundled `benchmarks.yaml` beside this module)
lists benchmarks; each entry names a file, its language and which of its columns play which role:

    version: 1
    benchmarks:
      - key: gsm8k_test
        path: ../sample_data/benchmarks/gsm8k_test/test.jsonl   # relative to the registry's folder
        language: en
        fields: {question: question, answer: answer}            # roles -> columns (`a.b`: nested)
        licence: MIT
        source: openai/grade-school-math test split

Roles: `question` (required), `id` (default: the 0-based row number), `choices` (a list column or a
string), `answer` (the reference answer), `language` (a per-item language column, only with
`language: multi`). `match` lists the roles matched against training prompts (default: question and
choices, those declared); `answer_match` (default: true when `answer` is declared) matches the
reference answer against training responses.

A bad entry raises `BenchmarkError` naming the registry file, the benchmark and the field:

    benchmarks.yaml: benchmark 'gsm8k_test': field 'language': unknown language 'jp'; allowed: en, ja, ...

A bad item (a benchmark is the user's evaluation set: it fails loudly, nothing is skipped) names the
benchmark, its file, the 0-based row and the role:

    benchmark 'math500' (file .../test_problems.jsonl), row 12, field 'question': column 'problem' missing

`load_items(spec)` reads one benchmark into a table (`ITEMS_SCHEMA`); `load_all(specs)` all of them.
Pure: no dagster.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import yaml

from partitions.registry import entry_message

#: the languages a benchmark (or, with `multi`, each of its items) may declare. `code` = source code
#: (HumanEval); `multi` = mixed languages: a `language` role names each item's language, else every
#: item is `multi` and the matcher decides per text
LANGUAGES = ("en", "ja", "zh", "ko", "fr", "de", "es", "ru", "code", "multi")
MULTI = "multi"
#: roles a benchmark's `fields` may map to columns
ROLES = ("id", "question", "choices", "answer", "language")
#: roles whose text may be matched against training prompts (`match`)
MATCH_ROLES = ("question", "choices", "answer")
DEFAULT_MATCH = ("question", "choices")
#: file suffixes read (gzip allowed for the text formats)
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
BUNDLED = Path(__file__).with_name("benchmarks.yaml")
ENV = "POSTTRAIN_BENCHMARKS"

_TOP_KEYS = ("version", "benchmarks")
_ENTRY_KEYS = ("key", "path", "language", "fields", "match", "answer_match", "licence", "license",
               "source", "limit")

#: one row per benchmark item
ITEMS_SCHEMA = pa.schema([
    ("benchmark", pa.string()),
    ("item_id", pa.string()),
    ("language", pa.string()),
    ("question", pa.string()),
    ("choices", pa.string()),
    ("answer", pa.string()),
    ("match_text", pa.string()),
    ("row", pa.int64()),
])


class BenchmarkError(ValueError):
    """A benchmarks registry or benchmark file that cannot be used; the message names the registry
    file or the benchmark's file, the benchmark, the row where there is one, and the field."""


@dataclass(frozen=True)
class BenchmarkSpec:
    key: str
    path: Path  # resolved (relative paths against the registry file's folder)
    language: str
    #: role -> column (dotted `a.b` reads a nested field, `a.0` a list element); left out of the hash
    #: (a dict), so a spec can key a cache
    fields: Mapping[str, str] = field(hash=False)
    #: roles matched against training prompts, in the order their texts are joined into `match_text`
    match: tuple[str, ...] = DEFAULT_MATCH
    #: whether the reference answer is matched against training responses
    answer_match: bool = False
    licence: str = ""
    source: str = ""
    limit: int | None = None
    #: the registry file it came from (for messages)
    origin: str = field(default="", compare=False)

    @property
    def file_format(self) -> str:
        return _suffix(self.path) or ""


# --------------------------------------------------------------------------- the registry


def default_benchmarks_path() -> str:
    """`$POSTTRAIN_BENCHMARKS`, else the bundled `posttrain_assets/decontamination/benchmarks.yaml`."""
    return os.environ.get(ENV) or str(BUNDLED)


def load_benchmarks(path: str | os.PathLike | None = None) -> list[BenchmarkSpec]:
    """Read and validate a benchmarks registry (default: `default_benchmarks_path()`)."""
    path = str(path or default_benchmarks_path())
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: benchmarks registry not found (set {ENV}?)") from None
    except yaml.YAMLError as exc:
        raise BenchmarkError(f"{path}: not valid YAML: {exc}") from None
    return parse_benchmarks(data, path)


def parse_benchmarks(data: Any, origin: str) -> list[BenchmarkSpec]:
    """A parsed registry (the YAML's mapping) -> its specs; relative paths resolve against the folder
    of `origin` (the registry file)."""
    if not isinstance(data, dict):
        raise _fail(origin, None, None, "the registry must be a mapping with a 'benchmarks' list")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise _fail(origin, None, unknown[0], f"unknown top-level field; allowed: {', '.join(_TOP_KEYS)}")
    raw_list = data.get("benchmarks")
    if not isinstance(raw_list, list) or not raw_list:
        raise _fail(origin, None, "benchmarks", "must be a non-empty list of benchmarks")
    base_dir = Path(origin).expanduser().resolve().parent
    specs: list[BenchmarkSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_list):
        spec = _parse_entry(raw, i, origin, base_dir)
        if spec.key in seen:
            raise _fail(origin, spec.key, "key", "duplicate benchmark key")
        seen.add(spec.key)
        specs.append(spec)
    return specs


def _fail(where: str, bench: str | None, fld: str | None, msg: str) -> BenchmarkError:
    return BenchmarkError(entry_message(where, "benchmark", bench, fld, msg))


def _parse_entry(raw: Any, idx: int, where: str, base_dir: Path) -> BenchmarkSpec:
    if not isinstance(raw, dict):
        raise _fail(where, f"#{idx}", None, f"each benchmark must be a mapping, got {type(raw).__name__}")
    key = raw.get("key")
    if not isinstance(key, str) or not KEY_RE.match(key):
        label = key if isinstance(key, str) else f"#{idx}"
        raise _fail(where, label, "key", f"must match {KEY_RE.pattern} (lowercase letters, digits, "
                                         f"'_', '.', '-'), got {key!r}")
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        raise _fail(where, key, unknown[0], f"unknown field; allowed: {', '.join(_ENTRY_KEYS)}")
    language = raw.get("language")
    if language not in LANGUAGES:
        raise _fail(where, key, "language", f"unknown language {language!r}; allowed: {', '.join(LANGUAGES)}")
    fields = _fields(raw.get("fields"), key, where, language)
    match = _match(raw, fields, key, where)
    answer_match = raw.get("answer_match", "answer" in fields)
    if not isinstance(answer_match, bool):
        raise _fail(where, key, "answer_match", f"must be true or false, got {answer_match!r}")
    if answer_match and "answer" not in fields:
        raise _fail(where, key, "answer_match", "true, but no 'answer' role in fields")
    licence = raw.get("licence", raw.get("license"))
    if not isinstance(licence, str) or not licence.strip():
        raise _fail(where, key, "licence", "required (the benchmark's licence, e.g. MIT; 'unknown' for "
                                           "your own unpublished set)")
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise _fail(where, key, "source", f"must be text, got {source!r}")
    limit = raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise _fail(where, key, "limit", f"must be a positive integer, got {limit!r}")
    return BenchmarkSpec(key=key, path=_path(raw.get("path"), key, where, base_dir), language=language,
                         fields=fields, match=match, answer_match=answer_match, licence=licence.strip(),
                         source=source.strip(), limit=limit, origin=where)


def _fields(raw: Any, key: str, where: str, language: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _fail(where, key, "fields", "required: a mapping of roles to columns, e.g. "
                                          "{question: problem, answer: answer}")
    for role, column in raw.items():
        if role not in ROLES:
            raise _fail(where, key, f"fields.{role}", f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not isinstance(column, str) or not column.strip():
            raise _fail(where, key, f"fields.{role}", f"must be a column name, got {column!r}")
    if "question" not in raw:
        raise _fail(where, key, "fields.question", "required: the column holding the benchmark's question")
    if "language" in raw and language != MULTI:
        raise _fail(where, key, "fields.language", f"a per-item language column needs language: {MULTI} "
                                                   f"(this benchmark is {language!r})")
    return {role: raw[role].strip() for role in ROLES if role in raw}


def _match(raw: dict, fields: dict[str, str], key: str, where: str) -> tuple[str, ...]:
    if "match" not in raw:
        return tuple(r for r in DEFAULT_MATCH if r in fields)
    match = raw["match"]
    if isinstance(match, str):
        match = [match]
    if not isinstance(match, list) or not match:
        raise _fail(where, key, "match", f"must be a non-empty list of roles ({', '.join(MATCH_ROLES)})")
    for role in match:
        if role not in MATCH_ROLES:
            raise _fail(where, key, "match", f"unknown role {role!r}; one of {', '.join(MATCH_ROLES)}")
        if role not in fields:
            raise _fail(where, key, "match", f"role {role!r} is not declared in fields")
    if len(set(match)) != len(match):
        raise _fail(where, key, "match", f"a role is listed twice: {match}")
    return tuple(match)


def _path(raw: Any, key: str, where: str, base_dir: Path) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise _fail(where, key, "path", "required: the benchmark's file (relative to the registry's folder)")
    path = Path(os.path.expanduser(os.path.expandvars(raw.strip())))
    if not path.is_absolute():
        path = base_dir / path
    path = path.resolve()
    if _suffix(path) is None:
        raise _fail(where, key, "path", f"unsupported file type {path.name!r}; one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise _fail(where, key, "path", f"file not found: {path}")
    return path


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


# --------------------------------------------------------------------------- the items

_MISSING = object()


class _ItemError(Exception):
    def __init__(self, row: int | None, role: str | None, msg: str):
        super().__init__(msg)
        self.row, self.role, self.msg = row, role, msg


def _item_error(spec: BenchmarkSpec, row: int | None, role: str | None, msg: str) -> BenchmarkError:
    parts = [f"benchmark {spec.key!r} (file {spec.path})"]
    if row is not None:
        parts.append(f"row {row}")
    if role is not None:
        parts.append(f"field {role!r}")
    return BenchmarkError(", ".join(parts) + ": " + msg)


def load_items(spec: BenchmarkSpec) -> pa.Table:
    """One benchmark's items (`ITEMS_SCHEMA`), in file order, at most `spec.limit`."""
    try:
        cols: dict[str, list] = {name: [] for name in ITEMS_SCHEMA.names}
        first_row: dict[str, int] = {}
        for row, record in _rows(spec):
            if spec.limit is not None and len(cols["row"]) >= spec.limit:
                break
            item = _item(spec, row, record)
            if item["item_id"] in first_row:
                raise _ItemError(row, "id", f"duplicate item id {item['item_id']!r} "
                                            f"(first at row {first_row[item['item_id']]})")
            first_row[item["item_id"]] = row
            for name in ITEMS_SCHEMA.names:
                cols[name].append(item[name])
    except _ItemError as exc:
        raise _item_error(spec, exc.row, exc.role, exc.msg) from None
    if not cols["row"]:
        raise _item_error(spec, None, None, "no rows: an empty benchmark checks nothing")
    return pa.table(cols, schema=ITEMS_SCHEMA)


def load_all(specs: list[BenchmarkSpec]) -> pa.Table:
    """Every benchmark's items, concatenated in the specs' order; keys must be unique."""
    seen: dict[str, BenchmarkSpec] = {}
    for spec in specs:
        if spec.key in seen:
            raise BenchmarkError(f"benchmark {spec.key!r}: duplicate key (files {seen[spec.key].path} "
                                 f"and {spec.path})")
        seen[spec.key] = spec
    tables = [load_items(spec) for spec in specs]
    return pa.concat_tables(tables) if tables else ITEMS_SCHEMA.empty_table()


def _item(spec: BenchmarkSpec, row: int, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _ItemError(row, None, f"not an object (a mapping of columns), got {type(record).__name__}")
    values = {role: _get(record, column) for role, column in spec.fields.items()}
    for role, value in values.items():
        if value is _MISSING:
            raise _ItemError(row, role, f"column {spec.fields[role]!r} missing in this row")
    question = _text(values["question"], row, "question")
    if question is None or not question.strip():
        raise _ItemError(row, "question", "null or empty: every benchmark item needs its question")
    choices = _text(values["choices"], row, "choices") if "choices" in values else None
    answer = _text(values["answer"], row, "answer") if "answer" in values else None
    texts = {"question": question, "choices": choices or None, "answer": answer or None}
    return {
        "benchmark": spec.key,
        "item_id": _item_id(values["id"], row) if "id" in values else str(row),
        "language": _language(values["language"], row) if "language" in values else spec.language,
        "question": question,
        "choices": texts["choices"],
        "answer": texts["answer"],
        "match_text": "\n".join(texts[r] for r in spec.match if texts[r]),
        "row": row,
    }


def _get(record: dict, column: str) -> Any:
    """A column; `a.b` reads a nested field and `a.0` a list element when no column is named `a.b`."""
    if column in record:
        return record[column]
    if "." not in column:
        return _MISSING
    value: Any = record
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value == value:
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _text(value: Any, row: int, role: str) -> str | None:
    """A role's text: a string, a number as its string, a list of those joined with line breaks
    (MT-Bench's `turns`, choices); None for null."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [_scalar(v) for v in value]
        if any(p is None for p in parts):
            bad = next(v for v, p in zip(value, parts) if p is None)
            raise _ItemError(row, role, f"a list of texts expected, it holds {type(bad).__name__} {bad!r:.80}")
        return "\n".join(parts)
    text = _scalar(value)
    if text is None or (role == "question" and not isinstance(value, str)):
        raise _ItemError(row, role, f"text expected, got {type(value).__name__} {value!r:.80}")
    return text


def _item_id(value: Any, row: int) -> str:
    text = None if isinstance(value, (list, tuple, dict)) else _scalar(value)
    if text is None or not text.strip():
        raise _ItemError(row, "id", f"a non-empty string or number expected, got {value!r:.80}")
    return text


def _language(value: Any, row: int) -> str:
    allowed = [lang for lang in LANGUAGES if lang != MULTI]
    if value not in allowed:
        raise _ItemError(row, "language", f"unknown language {value!r}; allowed: {', '.join(allowed)}")
    return value


# --------------------------------------------------------------------------- reading files


def _rows(spec: BenchmarkSpec) -> Iterator[tuple[int, Any]]:
    """(0-based row, record): the line number for JSON Lines (blank lines skipped, still counted), the
    element for JSON, the data row (after the header) for CSV, the row for Parquet."""
    fmt = spec.file_format
    opener = gzip.open if fmt.endswith(".gz") else open
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(spec.path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise _ItemError(None, None, f"cannot read the Parquet file: {exc}") from None
        yield from enumerate(records)
    elif fmt.startswith(".json") and not fmt.startswith(".jsonl"):
        try:
            with opener(spec.path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise _ItemError(None, None, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise _ItemError(None, None, f"cannot read the file: {exc}") from None
        if not isinstance(data, list):
            raise _ItemError(None, None, f"a .json benchmark must hold a list of objects, got {type(data).__name__}")
        yield from enumerate(data)
    else:
        with opener(spec.path, "rb") as raw:
            lines = _lines(raw, fmt)
            if fmt.startswith(".csv"):
                yield from _csv_rows(lines)
            else:
                for row, line in lines:
                    if not line.strip():
                        continue
                    try:
                        yield row, json.loads(line.rstrip("\r\n"))
                    except json.JSONDecodeError as exc:
                        raise _ItemError(row, None, f"not valid JSON (column {exc.colno}): {exc.msg}") from None


def _lines(raw, fmt: str) -> Iterator[tuple[int, str]]:
    """(0-based line, text), failing with the line reached when the file is truncated or not UTF-8."""
    text = io.TextIOWrapper(raw, encoding="utf-8", newline="" if fmt.startswith(".csv") else None)
    row = 0
    while True:
        try:
            line = text.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise _ItemError(row, None, f"cannot read the file (truncated or corrupt?): {exc}") from None
        except UnicodeDecodeError as exc:
            raise _ItemError(row, None, f"not UTF-8 text: {exc}") from None
        if not line:
            return
        yield row, line
        row += 1


def _csv_rows(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(line for _, line in lines)
    try:
        for row, record in enumerate(reader):
            if None in record:
                raise _ItemError(row, None, f"more values than the header's {len(reader.fieldnames or [])} columns")
            yield row, record
    except csv.Error as exc:
        raise _ItemError(None, None, f"not valid CSV (line {reader.line_num}): {exc}") from None
