"""Magpie generation (Xu et al. 2024): instructions written by an aligned chat model from its
pre-query template alone, then answered by the same model through the chat path. Pure: no dagster;
the model is any session-like object with

    .complete(prompts, **decoding) -> per prompt, a list of n answers (`.text`, `.finish_reason`,
                                      or an exception value for a failed request)   [raw completion]
    .run(task, rows, **decoding)   -> per row, a TaskResult (`.samples`, `.completions`)   [chat]

(`resources.llm.session.LLMSession`: both cached, so a re-run with the same settings makes no model
call).

Instructions (`generate`): `total_prompts` samples of the pre-query text, `n` per call (the last
call takes the remainder). Call i samples with `call_seed(seed, i)`, so each call is its own cached
request and a re-run, or a larger `total_prompts` with the same `n`, asks only for what is new.
Every sample ends exactly one way, by index 0..total_prompts-1:

    rejected  llm_failed (the request failed) | empty | truncated | template_echo  (templates.instruction_issue)
    removed   duplicate_instruction  (the same cleaned text as an earlier sample; `duplicate_of` names it)
    rejected  llm_failed on field `response` | empty_response   (the answer)
    out       a row

Nothing is ever a placeholder: a failed or rejected sample is a counted reject with its text.

Rows (`OUTPUT_SCHEMA`): `uuid` (stable: hash of the source key, the settings hash and the sample
index), `index`, `instruction` (cleaned: `templates.clean_instruction`), `response`,
`gen_input_configs` / `gen_response_configs` (JSON, upstream's field names), `model`, `family`,
`domain` (the variant; null for the plain template), `language` (detected from the instruction, as
merged_prompts does; the variant's target language is in gen_input_configs), `settings_hash`,
`version`, `finish_reason` (of the response: `length` = cut at res_max_tokens, kept and counted).

Settings (`MagpieSettings`): the registry's generator_config + version, the model's identity (the
LLMResource spec of `model`: backend, model, revision, ...), the rendered pre-query text, the stop
strings, the templates' and the response task's versions. `settings_hash` is the hash of all of
them; the table carries it per row and, with the settings, in the Parquet schema metadata, so the
overwrite guard (`overwrite_problem`) can compare a stored partition, even an empty one, with the
registry before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow as pa

from resources.llm.tasks import Task
from resources.reasons import Reason

from ..common.accounting import Accounting, RowIssue, raw_preview
from ..common.language import detect_language
from .templates import DEFAULT_SYSTEM, PreQueryTemplates, clean_instruction, default_templates

TEMPLATES_DIR = Path(__file__).parent / "templates"
#: the answer to a generated instruction (instruction = user message; see the YAML for the system turn)
RESPONSE = Task.from_file(TEMPLATES_DIR / "magpie_response.yaml", parse=lambda text, row: text.strip())
GENERATOR = "magpie"

OUTPUT_SCHEMA = pa.schema([
    ("uuid", pa.string()),  # blake2b-128 of (source key, settings_hash, index): stable across re-runs
    ("index", pa.int64()),  # the sample's position among the total_prompts requested
    ("instruction", pa.string()),
    ("response", pa.string()),
    ("gen_input_configs", pa.string()),  # JSON: temperature, top_p, max_tokens, stop, n, seed, pre_query_template, ...
    ("gen_response_configs", pa.string()),  # JSON: temperature, top_p, max_tokens, seed, system, task, ...
    ("model", pa.string()),  # backend:model of the session that wrote instruction and response
    ("family", pa.string()),
    ("domain", pa.string()),  # the variant (math, math.algebra, code, translation, ja, default_system) or null
    ("language", pa.string()),  # detected from the instruction (ISO 639-1; `und` without letters)
    ("settings_hash", pa.string()),
    ("version", pa.int64()),  # the registry entry's version
    ("finish_reason", pa.string()),  # of the response
])

#: Parquet schema metadata keys (bytes) written with every magpie_instructions table
META_HASH, META_VERSION, META_SETTINGS = b"posttrain.settings_hash", b"posttrain.version", b"posttrain.settings"

#: the funnel's stages, in order (counts of samples; see the module docstring)
FUNNEL = ("requested", "calls", "generated", "llm_failed", "empty", "truncated", "template_echo",
          "duplicate_instruction", "unique", "response_llm_failed", "empty_response", "answered",
          "response_truncated")
INSTRUCTION_REJECTS = (Reason.EMPTY, Reason.TRUNCATED, Reason.TEMPLATE_ECHO)
#: the model identity fields of an LLMResource ModelSpec that change what a model writes
MODEL_IDENTITY = ("backend", "model", "revision", "quantization", "dtype", "max_model_len",
                  "trust_remote_code", "batch_invariant", "base_url")


def model_identity(spec: Any) -> dict:
    """What of a model spec (an LLMResource ModelSpec, or a mapping) enters the settings hash.
    `base_url` only counts for the openai backend (the others ignore it)."""
    get = spec.get if isinstance(spec, dict) else (lambda k, d=None: getattr(spec, k, d))
    out = {k: get(k, None) for k in MODEL_IDENTITY}
    if out.get("backend") != "openai":
        out.pop("base_url", None)
    elif out.get("base_url"):  # a credential in the URL never enters the rows or their hash
        from resources.secrets import redact_url

        out["base_url"] = redact_url(out["base_url"])
    return out


def family_serves(family: str, model_name: str, templates: Optional[PreQueryTemplates] = None) -> Optional[bool]:
    """Whether the served model is one the family lists (its id or its last path part appears in
    `model_name`, case ignored); None when unknown (no model name, or the family lists none)."""
    fam = (templates or default_templates()).family(family)
    name = (model_name or "").casefold()
    if not name or not fam.models:
        return None
    return any(m.casefold() in name or m.rsplit("/", 1)[-1].casefold() in name for m in fam.models)


def call_seed(seed: int, call: int) -> int:
    """The seed of call `call` (31 bits, derived from the base seed and the call index)."""
    digest = hashlib.blake2b(f"magpie:{seed}:{call}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def call_plan(total: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(call index, first sample index, samples in this call, seed) for `total` samples, `n` per call."""
    plan, start, i = [], 0, 0
    while start < total:
        k = min(n, total - start)
        plan.append((i, start, k, call_seed(seed, i)))
        start, i = start + k, i + 1
    return plan


@dataclass(frozen=True)
class MagpieSettings:
    """Everything that decides the rows of one synthetic source (see the module docstring)."""

    config: dict  # the registry's generator_config, defaults filled in
    version: int = 1
    model: dict = field(default_factory=dict)  # model_identity of the LLMResource spec of config['model']
    templates: Optional[PreQueryTemplates] = None  # None = the bundled pre-query templates

    @classmethod
    def from_source(cls, spec: Any, model: Any = None,
                    templates: Optional[PreQueryTemplates] = None) -> "MagpieSettings":
        """From a registry SourceSpec of kind synthetic (generator magpie) and the model's spec."""
        return cls(config=dict(spec.generator_config), version=int(spec.version),
                   model=model_identity(model) if model is not None else {}, templates=templates)

    @property
    def t(self) -> PreQueryTemplates:
        return self.templates or default_templates()

    def __getattr__(self, name: str) -> Any:  # config fields as attributes: s.family, s.n, ...
        config = self.__dict__.get("config") or {}
        if name in config:
            return config[name]
        raise AttributeError(name)

    @property
    def pre_query(self) -> str:
        return self.t.pre_query(self.family, self.variant)

    @property
    def stop(self) -> list[str]:
        return self.t.stops(self.family)

    @property
    def target_language(self) -> str:
        return self.t.language(self.variant)

    @property
    def response_system(self) -> Optional[str]:
        return response_system(self.t, self.family, self.variant)

    def as_dict(self) -> dict:
        return {"generator": GENERATOR, "version": self.version, "generator_config": dict(self.config),
                "model": dict(self.model), "pre_query_template": self.pre_query, "stop": self.stop,
                "pre_query_templates_version": self.t.version, "response_system": self.response_system,
                "response_task": {"task": RESPONSE.name, "version": RESPONSE.version}}

    @property
    def settings_hash(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def response_system(templates: PreQueryTemplates, family: str, variant: Optional[str]) -> Optional[str]:
    """The system turn of the answer: the variant's text for a named variant; None (the model's own
    default) for the plain template and `default_system` (see templates/magpie_response.yaml)."""
    if variant is None or variant == DEFAULT_SYSTEM:
        return None
    return templates.system_prompt(family, variant)


def response_task(system: Optional[str]) -> Task:
    """RESPONSE with its system turn, or without one (`system` None)."""
    if system is not None:
        return RESPONSE
    return replace(RESPONSE, templates={lang: {**t, "system": None} for lang, t in RESPONSE.templates.items()})


def row_uuid(source: str, settings_hash: str, index: int) -> str:
    digest = hashlib.blake2b(f"{source}\x1f{settings_hash}\x1f{index}".encode("utf-8"), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


# ------------------------------------------------------------------------------------- generation

@dataclass
class MagpieResult:
    table: pa.Table
    issues: list[RowIssue]
    funnel: Counter
    accounting: Accounting
    requests: int = 0  # model requests (instruction samples + responses asked)
    failures: int = 0  # of which failed (llm_failed)
    first_prompt: str = ""  # the raw text completed (for the metadata)


def _is_failure(answer: Any) -> bool:
    return isinstance(answer, BaseException) or not hasattr(answer, "text")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _reject(issues: list[RowIssue], index: int, reason: str, fld: str, detail: str = "", raw: Optional[str] = None,
            outcome: str = "rejected", duplicate_of: Optional[str] = None) -> None:
    issues.append(RowIssue(reason=reason, source_row=index, source_file=GENERATOR, field=fld, detail=detail,
                           outcome=outcome, duplicate_of=duplicate_of,
                           raw=raw_preview(raw) if raw is not None else None))


def _instructions(session: Any, s: MagpieSettings, source: str, model: str, funnel: Counter,
                  issues: list[RowIssue], log: Optional[Callable[[str], None]]) -> list[dict]:
    """Step 1: sample instructions from the pre-query template call by call; reject failed / empty /
    truncated / template-echo samples and remove repeats. Returns the kept ones
    ({index, uuid, instruction, input_configs}), in sample order."""
    h, pre, stop = s.settings_hash, s.pre_query, s.stop
    kept: list[dict] = []
    seen: dict[str, str] = {}  # cleaned instruction -> uuid of its first sample
    plan = call_plan(s.total_prompts, s.n, s.seed)
    funnel["calls"] = len(plan)
    for call, start, k, seed in plan:
        answers = session.complete([pre], temperature=s.ins_temp, top_p=s.ins_top_p, max_tokens=s.ins_max_tokens,
                                   n=k, seed=seed, stop=stop)[0]
        answers = list(answers)[:k] + [RuntimeError(f"the model returned {len(answers)} of {k} samples")] * (k - len(answers))
        for j, a in enumerate(answers):
            index = start + j
            if _is_failure(a):
                funnel["llm_failed"] += 1
                _reject(issues, index, Reason.LLM_FAILED, "instruction", str(a))
                continue
            funnel["generated"] += 1
            issue = s.t.instruction_issue(a.text, a.finish_reason, s.family, s.variant)
            if issue:
                funnel[issue] += 1
                detail = {"empty": "nothing left after cleaning",
                          "truncated": f"no stop reached within ins_max_tokens={s.ins_max_tokens}",
                          "template_echo": "the text holds a piece of a chat template"}.get(issue, "")
                _reject(issues, index, issue, "instruction", detail, raw=a.text)
                continue
            text = clean_instruction(a.text)
            uid = row_uuid(source, h, index)
            if text in seen:
                funnel["duplicate_instruction"] += 1
                _reject(issues, index, Reason.DUPLICATE_INSTRUCTION, "instruction",
                        "the same instruction as an earlier sample", raw=text, outcome="removed", duplicate_of=seen[text])
                continue
            seen[text] = uid
            kept.append({"index": index, "uuid": uid, "instruction": text, "input_configs": {
                "temperature": s.ins_temp, "top_p": s.ins_top_p, "max_tokens": s.ins_max_tokens, "stop": stop,
                "n": k, "seed": seed, "base_seed": s.seed, "call": call, "sample": j,
                "pre_query_template": pre, "family": s.family, "variant": s.variant,
                "target_language": s.target_language, "input_generator": model,
                "finish_reason": a.finish_reason}})
        if log and ((call + 1) % max(1, len(plan) // 20) == 0 or call + 1 == len(plan)):  # ~20 lines at most
            log(f"{source}: call {call + 1}/{len(plan)}: {len(kept)} unique instructions so far")
    return kept


def _responses(session: Any, s: MagpieSettings, kept: list[dict], model: str, funnel: Counter,
               issues: list[RowIssue]) -> tuple[list[dict], int]:
    """Step 2: answer every kept instruction (the response task); reject failed and empty answers.
    Returns (the output rows, the number of failed response requests)."""
    system, h = s.response_system, s.settings_hash
    task = response_task(system)
    rows: list[dict] = []
    failures = 0
    if not kept:
        return rows, failures
    asks = [{"instruction": c["instruction"], "system": system or "", "language": detect_language(c["instruction"])}
            for c in kept]
    results = session.run(task, asks, temperature=s.res_temp, top_p=s.res_top_p, max_tokens=s.res_max_tokens,
                          n=1, seed=s.seed)
    for c, ask, res in zip(kept, asks, results):
        sample = res.samples[0] if res.samples else RuntimeError("no answer")
        completion = res.completions[0] if res.completions else None
        if not isinstance(sample, str) or completion is None:  # a TaskFailure (llm_failed)
            funnel["response_llm_failed"] += 1
            failures += 1
            detail = getattr(sample, "error", None) or str(sample)
            _reject(issues, c["index"], Reason.LLM_FAILED, "response", detail, raw=c["instruction"])
            continue
        if not sample:
            funnel["empty_response"] += 1
            _reject(issues, c["index"], Reason.EMPTY_RESPONSE, "response", "the answer is empty or whitespace only",
                    raw=c["instruction"])
            continue
        finish = completion.finish_reason or ""
        funnel["answered"] += 1
        funnel["response_truncated"] += finish == "length"
        rows.append({
            "uuid": c["uuid"], "index": c["index"], "instruction": c["instruction"], "response": sample,
            "gen_input_configs": _json(c["input_configs"]),
            "gen_response_configs": _json({
                "temperature": s.res_temp, "top_p": s.res_top_p, "max_tokens": s.res_max_tokens, "seed": s.seed,
                "system": system, "task": task.name, "task_version": task.version, "output_generator": model}),
            "model": model, "family": s.family, "domain": s.variant, "language": ask["language"],
            "settings_hash": h, "version": s.version, "finish_reason": finish})
    return rows, failures


def generate(session: Any, settings: MagpieSettings, source: str, *, model: str = "",
             log: Optional[Callable[[str], None]] = None) -> MagpieResult:
    """Instructions from the pre-query template, rejected / de-duplicated, then answered (see the
    module docstring). `model` is the label written in the `model` column (the session's
    backend:model)."""
    funnel: Counter = Counter({k: 0 for k in FUNNEL})
    funnel["requested"] = settings.total_prompts
    issues: list[RowIssue] = []
    kept = _instructions(session, settings, source, model, funnel, issues, log)
    funnel["unique"] = len(kept)
    rows, response_failures = _responses(session, settings, kept, model, funnel, issues)
    table = with_settings(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), settings)
    acc = Accounting.from_issues(settings.total_prompts, table.num_rows, issues)
    return MagpieResult(table=table, issues=issues, funnel=funnel, accounting=acc,
                        requests=funnel["requested"] + len(kept),
                        failures=funnel["llm_failed"] + response_failures, first_prompt=settings.pre_query)


def empty_table(settings: Optional[MagpieSettings] = None) -> pa.Table:
    """The typed empty table (a source that is not synthetic: no settings in its metadata)."""
    table = OUTPUT_SCHEMA.empty_table()
    return with_settings(table, settings) if settings is not None else table


def with_settings(table: pa.Table, settings: MagpieSettings) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.update({META_HASH: settings.settings_hash.encode(), META_VERSION: str(settings.version).encode(),
                 META_SETTINGS: json.dumps(settings.as_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8")})
    return table.replace_schema_metadata(meta)


# ------------------------------------------------------------------------------------- the overwrite guard

@dataclass(frozen=True)
class StoredSettings:
    """What a stored magpie_instructions partition was generated with (None: nothing recorded)."""

    settings_hash: Optional[str]
    version: Optional[int]
    rows: int
    settings: Optional[dict] = None


def stored_settings_of_file(path: str, filesystem: Any = None) -> StoredSettings:
    """`stored_settings` of a Parquet file, reading only its footer when the schema metadata has
    them (the columns otherwise)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, filesystem=filesystem)
    meta = pf.schema_arrow.metadata or {}
    if META_HASH in meta:
        return stored_settings(pf.schema_arrow.empty_table(), rows=pf.metadata.num_rows)
    cols = [c for c in ("settings_hash", "version") if c in pf.schema_arrow.names]
    return stored_settings(pf.read(columns=cols))


def stored_settings(table: Optional[pa.Table], rows: Optional[int] = None) -> Optional[StoredSettings]:
    """The settings a stored partition records: its schema metadata, else its rows' columns.
    `rows` overrides the row count (when `table` is the file's schema only)."""
    if table is None:
        return None
    meta = table.schema.metadata or {}
    h, v, full = meta.get(META_HASH), meta.get(META_VERSION), meta.get(META_SETTINGS)
    if h is not None:
        return StoredSettings(h.decode(), int(v) if v is not None else None,
                              table.num_rows if rows is None else rows, json.loads(full) if full else None)
    if table.num_rows and "settings_hash" in table.column_names:
        hashes = sorted({x for x in table["settings_hash"].to_pylist() if x})
        versions = sorted({x for x in table["version"].to_pylist() if x is not None}) \
            if "version" in table.column_names else []
        if hashes:
            return StoredSettings(hashes[0], versions[0] if versions else None, table.num_rows)
    return StoredSettings(None, None, table.num_rows)


def changed_settings(old: Optional[dict], new: dict) -> list[str]:
    """The settings that differ (generator_config fields by name, the rest by key)."""
    if not old:
        return []
    out = []
    oc, nc = old.get("generator_config") or {}, new.get("generator_config") or {}
    out += [f"generator_config.{k}: {oc.get(k)!r} -> {nc.get(k)!r}" for k in sorted(set(oc) | set(nc))
            if oc.get(k) != nc.get(k)]
    for k in sorted((set(old) | set(new)) - {"generator_config", "version"}):
        if old.get(k) != new.get(k):
            out.append(k if k != "model" else f"model: {old.get(k)} -> {new.get(k)}")
    return out


def overwrite_problem(source: str, stored: Optional[StoredSettings], settings: Optional[MagpieSettings]) -> Optional[str]:
    """Why writing this partition would silently replace rows generated with other settings (the
    step must fail), or None. `settings` None: the source is not synthetic (an empty table would be
    written). A stored partition without recorded settings (never generated) is free to write."""
    if stored is None or stored.settings_hash is None:
        return None
    what = f"magpie_instructions for source {source!r} holds {stored.rows} rows generated with settings " \
           f"{stored.settings_hash} (version {stored.version})"
    if settings is None:
        return (f"{what}, but the registry no longer lists {source!r} as a synthetic source; writing it would "
                f"replace them with an empty table. Restore the entry, or use another key for the new source")
    new = settings.settings_hash
    if new == stored.settings_hash:
        return None
    if stored.version != settings.version:
        return None  # the version was bumped (or changed): a deliberate replacement
    changes = changed_settings(stored.settings, settings.as_dict())
    return (f"{what}; the registry's settings now hash to {new} but `version` is still {settings.version}"
            + (f" (changed: {'; '.join(changes)})" if changes else "")
            + f". Bump `version` to {settings.version + 1} in the registry entry to replace those rows, "
              f"or give the new settings a new source key")


def funnel_markdown(funnel: Counter) -> str:
    lines = ["| stage | samples |", "|---|---|"]
    lines += [f"| {k} | {funnel.get(k, 0)} |" for k in FUNNEL]
    return "\n".join(lines)


def funnel_line(funnel: Counter) -> str:
    """One line: requested -> generated -> rejected by reason -> unique -> answered."""
    rej = ", ".join(f"{k} {funnel[k]}" for k in ("llm_failed", *INSTRUCTION_REJECTS, "duplicate_instruction")
                    if funnel.get(k))
    resp = ", ".join(f"{k} {funnel[k]}" for k in ("response_llm_failed", "empty_response") if funnel.get(k))
    return (f"requested {funnel['requested']} in {funnel['calls']} calls -> generated {funnel['generated']}"
            f"{f' (out: {rej})' if rej else ''} -> unique {funnel['unique']} -> answered {funnel['answered']}"
            f"{f' (out: {resp})' if resp else ''}; responses cut at max_tokens {funnel['response_truncated']}")
