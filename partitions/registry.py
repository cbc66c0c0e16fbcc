"""The sources registry: one YAML file listing every source dataset, validated on load.

Each entry becomes one key of the `source` dynamic partitions. A bad entry raises
`RegistryError` whose message names the file, the source and the field, e.g.

    partitions/sources.yaml: source 'gsm8k': field 'kind': must be one of attributes, cot, ...

A source of kind `synthetic` has no loader, adapter or fields: its rows are written by a generator
(`generator: magpie` -> the `magpie_instructions` asset) from `generator_config` (MAGPIE_DEFAULTS:
family, variant, model, total_prompts, decoding, n, seed), under a `version` (default 1) that must
change whenever the settings of a partition that already holds rows change.

A source with `shard_rows: R` (or `shards: N`) is one entry and many partitions: `<key>.s0000`,
`<key>.s0001`, ... (partitions/shards.py). `Registry.keys` lists the partition keys (a sharded
source's shard keys instead of its own key); `Registry.get("<key>.s0003")` is the source's spec with
`key` = the shard key and `shard` = the shard's row range, so per-source assets run unchanged on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .shards import (MAX_PARTITIONS, ShardError, ShardRange, count_rows, looks_like_shard_key,
                     parse_shard_key, shard_count, shard_key, shard_size)

KINDS = ("prompt", "sft", "cot", "preference", "attributes", "synthetic")
#: a source whose rows a generator writes (no loader, no adapter): `generator` + `generator_config`
SYNTHETIC = "synthetic"
#: the generators a synthetic source can name (the asset that writes its rows: magpie_instructions)
GENERATORS = ("magpie",)
#: generator -> the asset whose partition holds a synthetic source's rows (raw_records reads it)
GENERATOR_ASSETS = {"magpie": "magpie_instructions"}
FORMATS = ("jsonl", "json", "csv", "parquet")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
DEDUP_KEYS = ("record", "prompt")
#: how the generic adapter reads a `prompt` column holding a list of strings (MT-Bench `turns`):
#: 'all' = every string is one user turn of a multi-turn prompt, 'first' = the first string only
TURNS = ("all", "first")

#: Logical fields each adapter understands, with the raw column it reads by default.
#: `None` means the field is optional and unmapped unless the registry maps it.
ADAPTER_FIELDS: dict[str, dict[str, str | None]] = {
    # one row = one record; map any of these logical fields to columns
    "generic": {"prompt": None, "response": None, "chosen": None, "rejected": None,
                "system": None, "reference_answer": None, "id": None},
    # question -> prompt, answer -> response, final answer after '####' -> reference_answer
    "gsm8k": {"prompt": "question", "response": "answer", "id": None},
    # chosen / rejected transcripts with '\n\nHuman:' / '\n\nAssistant:' turns
    "hh_rlhf": {"chosen": "chosen", "rejected": "rejected", "id": None},
    # instruction + instances[{input, output}]; one record per instance
    "self_instruct": {"prompt": "instruction", "instances": "instances", "id": "id"},
    # OpenAssistant message tree: `root` is the column holding the root message
    # ('.' when each row is itself a root message, as in *_message.jsonl exports)
    "oasst_tree": {"root": "prompt", "id": None},
    # HelpSteer3 preference rows: context (messages or text), two responses, overall_preference -3..3
    "helpsteer3": {"context": "context", "response1": "response1", "response2": "response2",
                   "overall_preference": "overall_preference", "id": None},
    # Alpaca rows: instruction (+ input, after a blank line) -> prompt; output -> response;
    # optional system prompt and history ([[user, assistant], ...] turns before the instruction)
    "alpaca": {"prompt": "instruction", "input": "input", "response": "output", "system": None,
               "history": None, "id": None},
    # ShareGPT rows: conversations [{from, value}] (human/gpt/system/tool/function_call/observation);
    # prompt = the turns before the final assistant turn, response = that turn; map `system`
    # (a system prompt column) and `tools` (a list or JSON text of tool schemas) when the file has them
    "sharegpt": {"conversations": "conversations", "system": None, "tools": None, "id": None},
    # OpenAI chat rows: messages [{role, content}] (system/developer/user/assistant/tool); prompt =
    # the turns before the final assistant turn, response = that turn; `label` = an optional boolean
    # judgement of the final turn (KTO desirable / undesirable), kept in `labels`
    "messages": {"messages": "messages", "label": None, "id": None},
    # HelpSteer / HelpSteer2: prompt, response and the five human 0-4 scores (kept in `labels`)
    "helpsteer": {"prompt": "prompt", "response": "response", "helpfulness": "helpfulness",
                  "correctness": "correctness", "coherence": "coherence", "complexity": "complexity",
                  "verbosity": "verbosity", "id": None},
    # flat OpenAssistant messages (one row per message: id, parent id, role, text), rebuilt into
    # trees across the file, then read as `oasst_tree`; `quality` = an editor's 1-5 rating
    # (oasst2_ja_edited), `labels` = OASST's per-message labels where the export has them
    "oasst_messages": {"id": "message_id", "parent": "parent_id", "role": "role", "text": "text",
                       "tree": "message_tree_id", "quality": None, "labels": None, "root": "."},
    # battle logs (Chatbot Arena, WebDev Arena): two conversations of the same user turns + a verdict;
    # content as a string or a list of typed parts [{type: "text", text}]; an assistant turn's extra
    # payload (`object`: {code, file_path, ...}) is kept (options: verdicts, payload, payload_in_content)
    "pairwise": {"conversation_a": "conversation_a", "conversation_b": "conversation_b", "winner": "winner",
                 "id": None},
    # n generations per problem + per-generation verdicts (OpenR1-Math): CoT rows from the `messages`
    # answer or the correct complete traces, and preference pairs under a rule (options: pair_rule, cot_rows)
    "multi_trace": {"prompt": "problem", "traces": "generations", "verdicts": "correctness_math_verify",
                    "fallback_verdicts": "correctness_llama", "complete": "is_reasoning_complete",
                    "finish_reasons": "finish_reasons", "messages": "messages", "reference_answer": "answer",
                    "id": None},
}
#: adapters that join rows across the whole file (flat messages -> trees): a shard would cut trees apart
CROSS_ROW_ADAPTERS = ("oasst_messages",)
#: adapters whose records carry human attribute labels (the only ones a kind `attributes` source may use)
ATTRIBUTE_ADAPTERS = ("oasst_tree", "oasst_messages", "helpsteer")

#: Logical fields that must end up mapped for an adapter to produce anything.
ADAPTER_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "generic": (("prompt",),),
    "gsm8k": (("prompt", "response"),),
    "hh_rlhf": (("chosen", "rejected"),),
    "self_instruct": (("prompt", "instances"),),
    "oasst_tree": (("root",),),
    "helpsteer3": (("context", "response1", "response2", "overall_preference"),),
    "alpaca": (("prompt", "response"),),
    "sharegpt": (("conversations",),),
    "messages": (("messages",),),
    "helpsteer": (("prompt", "response"),),
    "oasst_messages": (("id", "parent", "role", "text"),),
    "pairwise": (("conversation_a", "conversation_b", "winner"),),
    "multi_trace": (("prompt", "traces", "verdicts"),),
}
#: the kind an adapter's rows need, where it is not free (pairwise: pairs; multi_trace: CoT rows + pairs)
ADAPTER_KINDS = {"pairwise": ("preference",), "multi_trace": ("cot",)}

#: `answer_rule`: how a CoT answer is separated from the reasoning when no <think>...</think> tags do it
#: (records/unify.split_reasoning). auto = '####' (GSM8K), else the last \boxed{}, else unsplit;
#: boxed / gsm8k = only that rule; none = everything in `thinking`, answer "" (the seed's LIMO / NuminaMath)
ANSWER_RULES = ("auto", "boxed", "gsm8k", "none")

#: pairwise verdicts: what a `winner` value means (a / b preferred, a tie, both bad)
VERDICT_MEANINGS = ("a", "b", "tie", "both_bad")
#: multi_trace pair rules (posttrain_assets/ingest/comparisons.py trace_pairs)
PAIR_RULES = ("best_vs_worst", "all_pairs", "seed")
#: multi_trace CoT rows: the `messages` answer (one per problem), or every correct and complete trace
COT_ROWS = ("messages", "correct")
#: per-adapter `options`: name -> default (checked by _parse_options)
ADAPTER_OPTIONS: dict[str, dict[str, Any]] = {
    "pairwise": {"verdicts": {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad"},
                 "payload": "object", "payload_in_content": True},
    "multi_trace": {"pair_rule": "best_vs_worst", "cot_rows": "messages"},
}


#: `generator_config` of `generator: magpie`: field -> default (None: no default). Checked by
#: `_parse_magpie` (types, ranges, the family / variant against the pre-query templates).
MAGPIE_DEFAULTS: dict[str, Any] = {
    "family": "smollm2",  # pre-query template family (posttrain_assets/magpie/templates/); smollm2 = the embedded model
    "variant": None,  # None (plain template) | a variant of the family: math, math.algebra, ..., code, translation, ja
    "model": "generator",  # the LLMResource model name that writes both instructions and responses
    "total_prompts": None,  # required: instructions requested (rows_in of magpie_instructions)
    "ins_temp": 1.0,  # instruction sampling (upstream gen_ins.py defaults)
    "ins_top_p": 1.0,
    "ins_max_tokens": 512,
    "res_temp": 0.0,  # response decoding (upstream gen_res.py defaults)
    "res_top_p": 1.0,
    "res_max_tokens": 2048,
    "n": 200,  # instructions per model call (samples of one seeded request)
    "seed": 0,  # base seed; call i samples with a seed derived from (seed, i)
}
#: fields a synthetic source must not have (its rows come from the generator, not from files). Its
#: `licence` stays required: the generated data's terms depend on the model that writes it.
SYNTHETIC_FORBIDDEN = ("loader", "adapter", "fields", "turns", "shard_rows", "shards")
#: the columns magpie_instructions writes, as the generic adapter would read them (see SourceSpec)
MAGPIE_FIELDS = {"prompt": "instruction", "response": "response", "id": "uuid"}


class RegistryError(ValueError):
    """A sources registry that cannot be used; the message names file, source and field."""


@dataclass(frozen=True)
class LoaderSpec:
    """Where the rows come from: local file(s) or a Hugging Face hub dataset."""

    path: str | None = None  # local path or glob, absolute or relative to the registry file
    format: str | None = None  # jsonl | json | csv | parquet; inferred from the extension
    hub: str | None = None  # hub dataset id (or a local dataset folder) for datasets.load_dataset
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    limit: int | None = None  # read at most this many rows per file (None = all)
    offset: int = 0  # skip this many rows of each file first (with limit: one shard of a large source)
    # several configs / splits of one hub dataset (OpenR1-Math default + extended): every (config,
    # split) in this order, read one after the other as the files of a glob are
    configs: tuple = ()
    splits: tuple = ()

    def hub_parts(self) -> list[tuple[str | None, str]]:
        """(config, split) of every part of a hub source, in reading order."""
        return [(c, s) for c in (self.configs or (self.config,)) for s in (self.splits or (self.split,))]


def hub_part_label(config: str | None, split: str) -> str:
    """A hub part's `source_file`: '<config>/<split>' ('default' for no config): row ids of two
    configs with the same split names differ."""
    return f"{config or 'default'}/{split}"


def glob_root(pattern: str) -> str:
    """The folder a path pattern's matches are named relative to: its leading folders up to the
    first one with a wildcard (a plain file path: its folder). Two files of one source then never
    share a name (`default/train-00000-of-00001.parquet`, `extended/train-00000-of-00001.parquet`)."""
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return str(Path(*parts[:i])) if i else "."
    return str(Path(pattern).parent)


@dataclass(frozen=True)
class SourceSpec:
    key: str
    kind: str
    adapter: str
    loader: LoaderSpec
    licence: str
    fields: dict[str, str] = field(default_factory=dict)  # logical field -> raw column
    description: str = ""
    priority: int = 100  # lower wins when global dedup picks a representative
    dedup_key: str = "record"  # 'record' (prompt + responses) or 'prompt'
    turns: str = "all"  # generic adapter, prompt given as a list of strings: 'all' or 'first' turn
    base_dir: str = "."  # folder of the registry file; relative paths resolve against it
    # kind 'synthetic' only: the generator that writes the rows and its settings (every field, with
    # the defaults filled in), and the settings' version: changing the settings of a partition that
    # already holds rows needs a new version (or a new key); see magpie_instructions
    generator: str | None = None
    generator_config: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    # the model stages (MODEL_STAGES) that take this source's rows; None = its kind's default
    model_stages: tuple[str, ...] | None = None
    # sharding (partitions/shards.py): declared on the entry (`shard_rows` or `shards`); `shard` is set
    # on the spec of one shard (Registry.get of a shard key), whose `key` is then the shard key
    shard_rows: int | None = None
    shards: int | None = None
    shard: ShardRange | None = None
    answer_rule: str = "auto"  # records: how a CoT answer is split off (ANSWER_RULES)
    # keep only rows whose label columns pass these conditions (common/label_filter.py), at ingest
    label_filter: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, defaults filled (ADAPTER_OPTIONS)

    def option(self, name: str) -> Any:
        """An adapter option (registry `options`, else its default)."""
        return self.options.get(name, ADAPTER_OPTIONS.get(self.adapter, {}).get(name))

    @property
    def sharded(self) -> bool:
        """The entry declares shards (`shard_rows` or `shards`): its partitions are its shard keys."""
        return self.shard_rows is not None or self.shards is not None

    @property
    def source_key(self) -> str:
        """The registry entry's own key (the parent of a shard)."""
        return self.shard.parent if self.shard is not None else self.key

    def file_row_counts(self) -> list[int]:
        """Rows per file (resolved_paths order; the hub split: one count), as the loader numbers them."""
        if self.loader.hub:
            return [hub_rows(self, c, sp) for c, sp in self.loader.hub_parts()]
        try:
            return [count_rows(p, self.file_format(p)) for p in self.resolved_paths()]
        except (OSError, ShardError) as exc:
            raise RegistryError(f"source '{self.source_key}': cannot count its rows for sharding: {exc}") from None

    def shard_layout(self) -> tuple[int, int, int]:
        """(rows, rows per shard, shards) of a sharded entry, from the files as they are now."""
        total = sum(self.file_row_counts())
        size = shard_size(total, self.shard_rows, self.shards)
        return total, size, shard_count(total, size)

    def shard_keys(self) -> list[str]:
        """The partition keys of this entry: its shard keys, or [key] when it is not sharded."""
        if not self.sharded:
            return [self.key]
        return [shard_key(self.key, i) for i in range(self.shard_layout()[2])]

    def for_shard(self, index: int) -> "SourceSpec":
        """The spec of shard `index`: key = the shard key, `shard` = its row range. With `shard_rows`
        no row is counted (the range follows from the index; the loader fails clearly on a range past
        the end); with `shards: N` the rows are counted (cached) to size the shards."""
        from dataclasses import replace

        if self.shard_rows is not None:
            size = self.shard_rows
        else:
            total, size, n = self.shard_layout()
            if index >= n:
                raise RegistryError(f"source '{self.key}': shard {shard_key(self.key, index)!r} does not exist: "
                                    f"{total:,} rows in {n} shards of {size:,} (s0000 .. {shard_key(self.key, n - 1)})")
        rng = ShardRange(parent=self.key, index=index, start=index * size, stop=(index + 1) * size)
        return replace(self, key=rng.key, shard=rng)

    def runs_stage(self, stage: str) -> bool:
        """Whether the model stage `stage` works on this source's rows (registry `model_stages`, else
        the kind's default); the stage's assets count the rows of a source it skips as removed."""
        if stage not in MODEL_STAGES:
            raise ValueError(f"unknown model stage {stage!r}; one of {', '.join(MODEL_STAGES)}")
        return stage in (default_model_stages(self.kind) if self.model_stages is None else self.model_stages)

    @property
    def synthetic(self) -> bool:
        """Rows written by a generator (`kind: synthetic`), not loaded from files. Such a spec has an
        empty `loader` and the generic adapter over the generator's columns (MAGPIE_FIELDS), so code
        that maps columns never meets an unknown adapter."""
        return self.kind == SYNTHETIC

    def column(self, logical: str) -> str | None:
        """The raw column mapped to a logical field (registry mapping over adapter default)."""
        if logical in self.fields:
            return self.fields[logical]
        return ADAPTER_FIELDS[self.adapter].get(logical)

    def mapped_columns(self) -> dict[str, str]:
        out = {}
        for logical in ADAPTER_FIELDS[self.adapter]:
            col = self.column(logical)
            if col:
                out[logical] = col
        return out

    def path_pattern(self) -> str:
        """The loader path as an absolute, normalised pattern ($VARS, ~ and the registry's folder resolved)."""
        assert self.loader.path is not None
        pattern = os.path.expandvars(os.path.expanduser(self.loader.path))
        if not os.path.isabs(pattern):
            pattern = os.path.join(self.base_dir, pattern)
        return os.path.normpath(pattern)

    def relative_name(self, path: Path) -> str:
        """A file's `source_file`: its path relative to the glob's root (glob_root), '/'-separated."""
        return Path(os.path.relpath(path, glob_root(self.path_pattern()))).as_posix()

    def resolved_paths(self) -> list[Path]:
        """Local files of this source, sorted; raises RegistryError when none match."""
        import glob

        pattern = self.path_pattern()
        matches = sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
        if not matches:
            # the path as written: a $VAR's value (it may hold a secret) never reaches a message or a log
            shown = self.loader.path if ("$" in self.loader.path or "~" in self.loader.path) else pattern
            expanded = " after expanding $VARS and ~" if shown != pattern else ""
            raise RegistryError(
                f"source '{self.key}': field 'loader.path': no file matches {shown!r}{expanded}"
            )
        return matches

    def file_format(self, path: Path) -> str:
        if self.loader.format:
            return self.loader.format
        name = path.name.lower()
        if name.endswith(".gz"):
            name = name[:-3]
        for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                         (".csv", "csv"), (".parquet", "parquet")):
            if name.endswith(ext):
                return fmt
        raise RegistryError(
            f"source '{self.key}': field 'loader.format': cannot infer the format of "
            f"{path.name!r}; set one of {', '.join(FORMATS)}"
        )


@dataclass(frozen=True)
class Registry:
    path: str
    sources: tuple[SourceSpec, ...]

    @property
    def source_keys(self) -> list[str]:
        """The entries' own keys (one per registry entry, sharded or not)."""
        return [s.key for s in self.sources]

    @property
    def keys(self) -> list[str]:
        """The `source` partition keys: an entry's key, or a sharded entry's shard keys (counted from
        its files, cached per file). Raises RegistryError past MAX_PARTITIONS partitions."""
        return list(self._partition_keys)

    @cached_property
    def _partition_keys(self) -> tuple[str, ...]:
        keys: list[str] = []
        sizes = []
        for s in self.sources:
            ks = s.shard_keys()
            sizes.append((len(ks), s.key))
            keys.extend(ks)
        if len(keys) > MAX_PARTITIONS:
            big = ", ".join(f"{k} ({n:,})" for n, k in sorted(sizes, reverse=True)[:3])
            raise RegistryError(f"{self.path}: {len(keys):,} source partitions, more than Dagster's "
                                f"{MAX_PARTITIONS:,} per asset; largest: {big}: raise their shard_rows "
                                f"(or lower shards)")
        return tuple(keys)

    def _entry(self, key: str) -> SourceSpec | None:
        for s in self.sources:
            if s.key == key:
                return s
        return None

    def get(self, key: str) -> SourceSpec:
        """The spec of a partition key: an entry's key, or a shard key `<key>.sNNNN` of a sharded entry
        (the entry's spec for that shard's rows; see SourceSpec.for_shard)."""
        spec = self._entry(key)
        if spec is not None:
            return spec
        parsed = parse_shard_key(key)
        if parsed is not None:
            parent = self._entry(parsed[0])
            if parent is not None and parent.sharded:
                return parent.for_shard(parsed[1])
            if parent is not None:
                raise RegistryError(f"{self.path}: source {parsed[0]!r} is not sharded (no shard_rows / "
                                    f"shards), so it has no shard {key!r}")
        raise RegistryError(
            f"{self.path}: unknown source key {key!r}; the registry has: {', '.join(self.source_keys)}"
        )

    def specs_for(self, keys) -> dict[str, SourceSpec]:
        """key -> spec for the partition keys the registry knows (entries and shards; others left out)."""
        out = {s.key: s for s in self.sources}
        for k in keys:
            if k not in out:
                spec = self.find(k)
                if spec is not None:
                    out[k] = spec
        return out

    def parent_of(self, key: str) -> str:
        """The registry entry a partition key belongs to: a shard key's source, else the key itself."""
        parsed = parse_shard_key(key)
        if parsed is not None and (entry := self._entry(parsed[0])) is not None and entry.sharded:
            return parsed[0]
        return key

    def find(self, key: str) -> SourceSpec | None:
        """`get`, or None for a key the registry does not know (a partition kept from an old entry)."""
        try:
            return self.get(key)
        except RegistryError:
            return None


def default_registry_path() -> str:
    """`$POSTTRAIN_SOURCES`, else the bundled `partitions/sources.yaml`."""
    return os.environ.get("POSTTRAIN_SOURCES") or str(Path(__file__).with_name("sources.yaml"))


#: the stages that run a model over a source's rows (asset groups): `model_stages` lists those a
#: source takes part in. Default: all of them, but only `steerlm` (labelling its SFT rows) for kind
#: `attributes`: human-rated replies are the attribute model's training data, not seeds to score,
#: evolve or tag (a source that should be both lists the stages it wants)
MODEL_STAGES = ("scoring", "synthesis", "tagging", "steerlm")
DEFAULT_MODEL_STAGES = {"attributes": ("steerlm",)}


def default_model_stages(kind: str) -> tuple[str, ...]:
    return DEFAULT_MODEL_STAGES.get(kind, MODEL_STAGES)


_TOP_KEYS = {"version", "sources"}
_SOURCE_KEYS = {"key", "kind", "adapter", "loader", "licence", "license", "fields",
                "description", "priority", "dedup_key", "turns", "generator", "generator_config", "version",
                "model_stages", "shard_rows", "shards", "answer_rule", "label_filter", "options"}
_SYNTHETIC_ONLY = ("generator", "generator_config", "version")
_LOADER_KEYS = {"path", "format", "hub", "config", "split", "revision", "limit", "offset"}


def _fail(where: str, src: str | None, fld: str | None, msg: str) -> RegistryError:
    parts = [where]
    if src is not None:
        parts.append(f"source {src!r}")
    if fld is not None:
        parts.append(f"field {fld!r}")
    return RegistryError(": ".join(parts) + ": " + msg)


def _parse_source(raw: Any, idx: int, where: str, base_dir: str) -> SourceSpec:
    label = f"#{idx}"
    if not isinstance(raw, dict):
        raise _fail(where, label, None, f"each source must be a mapping, got {type(raw).__name__}")
    key = raw.get("key")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise _fail(where, label, "key",
                    f"must match {KEY_RE.pattern} (lowercase, digits, _ . -), got {key!r}")
    label = key
    if looks_like_shard_key(key):
        raise _fail(where, label, "key", "ends like a shard key (.sNNNN), which is reserved for the "
                                         "partitions of a sharded source (shard_rows / shards)")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise _fail(where, label, sorted(unknown)[0],
                    f"unknown field; allowed: {', '.join(sorted(_SOURCE_KEYS))}")

    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(where, label, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == SYNTHETIC:
        return _parse_synthetic(raw, label, where, base_dir)
    for name in _SYNTHETIC_ONLY:
        if name in raw:
            raise _fail(where, label, name, f"only a source of kind {SYNTHETIC!r} has it, not kind {kind!r}")
    adapter = raw.get("adapter", "generic")
    if adapter not in ADAPTER_FIELDS:
        raise _fail(where, label, "adapter",
                    f"must be one of {', '.join(ADAPTER_FIELDS)}, got {adapter!r}")
    licence, priority, dedup_key = _common_fields(raw, label, where)
    model_stages = _model_stages(raw, label, where)

    fields = raw.get("fields") or {}
    if not isinstance(fields, dict):
        raise _fail(where, label, "fields", "must be a mapping of logical field -> column")
    for logical, col in fields.items():
        if logical not in ADAPTER_FIELDS[adapter]:
            raise _fail(where, label, f"fields.{logical}",
                        f"adapter {adapter!r} has no field {logical!r}; "
                        f"it knows: {', '.join(ADAPTER_FIELDS[adapter])}")
        if col is not None and (not isinstance(col, str) or not col):
            raise _fail(where, label, f"fields.{logical}", f"must be a column name, got {col!r}")

    loader_raw = raw.get("loader")
    if not isinstance(loader_raw, dict):
        raise _fail(where, label, "loader",
                    "required: a mapping with 'path' (local file/glob) or 'hub' (dataset id)")
    bad = set(loader_raw) - _LOADER_KEYS
    if bad:
        raise _fail(where, label, f"loader.{sorted(bad)[0]}",
                    f"unknown field; allowed: {', '.join(sorted(_LOADER_KEYS))}")
    if bool(loader_raw.get("path")) == bool(loader_raw.get("hub")):
        raise _fail(where, label, "loader", "give exactly one of 'path' or 'hub'")
    fmt = loader_raw.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _fail(where, label, "loader.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    limit = loader_raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise _fail(where, label, "loader.limit", f"must be a positive integer, got {limit!r}")
    offset = loader_raw.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _fail(where, label, "loader.offset", f"must be a non-negative integer, got {offset!r}")
    for name in ("path", "hub", "revision"):
        v = loader_raw.get(name)
        if v is not None and not isinstance(v, str):
            raise _fail(where, label, f"loader.{name}", f"must be a string, got {v!r}")
    many: dict[str, tuple] = {}
    for name in ("config", "split"):  # one name, or a list of them (hub only)
        v = loader_raw.get(name)
        if isinstance(v, list):
            if not loader_raw.get("hub"):
                raise _fail(where, label, f"loader.{name}", "a list of names is for a hub dataset (loader.hub)")
            if not v or not all(isinstance(x, str) and x for x in v) or len(set(v)) != len(v):
                raise _fail(where, label, f"loader.{name}", f"must be a non-empty list of distinct names, got {v!r}")
            many[name] = tuple(v)
        elif v is not None and not isinstance(v, str):
            raise _fail(where, label, f"loader.{name}", f"must be a string or a list of strings, got {v!r}")
    loader = LoaderSpec(
        path=loader_raw.get("path"), format=fmt, hub=loader_raw.get("hub"),
        config=None if "config" in many else loader_raw.get("config"),
        split="train" if "split" in many else (loader_raw.get("split") or "train"),
        revision=loader_raw.get("revision"), limit=limit, offset=offset,
        configs=many.get("config", ()), splits=many.get("split", ()),
    )

    shard_rows, shards = _shard_fields(raw, key, label, where, loader)
    if (shard_rows or shards) and adapter in CROSS_ROW_ADAPTERS:
        raise _fail(where, label, "shard_rows" if shard_rows else "shards",
                    f"adapter {adapter!r} rebuilds message trees across the whole file: its rows cannot be "
                    f"sharded (export one tree per row and use adapter 'oasst_tree')")

    turns = raw.get("turns", "all")
    if turns not in TURNS:
        raise _fail(where, label, "turns", f"must be one of {', '.join(TURNS)}, got {turns!r}")
    if "turns" in raw and adapter != "generic":
        raise _fail(where, label, "turns",
                    f"only the generic adapter reads it (a list of strings as prompt), not {adapter!r}")

    answer_rule = raw.get("answer_rule", "auto")
    if answer_rule not in ANSWER_RULES:
        raise _fail(where, label, "answer_rule", f"must be one of {', '.join(ANSWER_RULES)}, got {answer_rule!r}")
    if adapter in ADAPTER_KINDS and kind not in ADAPTER_KINDS[adapter]:
        raise _fail(where, label, "kind", f"adapter {adapter!r} writes {' / '.join(ADAPTER_KINDS[adapter])} rows: "
                                          f"kind must be {' or '.join(ADAPTER_KINDS[adapter])}, got {kind!r}")

    spec = SourceSpec(
        key=key, kind=kind, adapter=adapter, loader=loader, licence=licence,
        fields={k: v for k, v in fields.items()}, description=str(raw.get("description") or ""),
        priority=priority, dedup_key=dedup_key, turns=turns, base_dir=base_dir, model_stages=model_stages,
        shard_rows=shard_rows, shards=shards, answer_rule=answer_rule,
        label_filter=_label_filter(raw, label, where), options=_parse_options(raw, adapter, label, where),
    )
    mapped = spec.mapped_columns()
    options = ADAPTER_REQUIRED[adapter]
    if not any(all(f in mapped for f in group) for group in options):
        need = " or ".join("+".join(g) for g in options)
        raise _fail(where, label, "fields", f"adapter {adapter!r} needs {need} mapped")
    if kind == "preference" and adapter not in ("helpsteer3", "pairwise") and not ({"chosen", "rejected"} <= set(mapped)):
        raise _fail(where, label, "fields", "kind 'preference' needs 'chosen' and 'rejected' mapped")
    if kind == "attributes" and adapter not in ATTRIBUTE_ADAPTERS:
        raise _fail(where, label, "adapter", f"kind 'attributes' needs an adapter whose rows carry human "
                                             f"labels: one of {', '.join(ATTRIBUTE_ADAPTERS)}, got {adapter!r}")
    return spec


def _label_filter(raw: dict, label: str, where: str) -> tuple[str, ...]:
    """`label_filter`: a condition or a list of them ('pass_rate_72b_tir <= 0.1', '0.2 <= x < 0.8'), all
    checked here (posttrain_assets/common/label_filter.py parses them)."""
    if "label_filter" not in raw:
        return ()
    value = raw["label_filter"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise _fail(where, label, "label_filter", f"must be a condition or a list of conditions "
                                                  f"('COLUMN <= NUMBER', 'LOW <= COLUMN < HIGH', ...), got {value!r}")
    from posttrain_assets.common.label_filter import LabelFilterError, parse_condition

    for i, text in enumerate(items):
        try:
            parse_condition(text)
        except LabelFilterError as exc:
            raise _fail(where, label, f"label_filter[{i}]" if len(items) > 1 or not isinstance(value, str)
                        else "label_filter", str(exc)) from None
    return tuple(items)


def _parse_options(raw: dict, adapter: str, label: str, where: str) -> dict[str, Any]:
    """`options` of the adapters that have some (ADAPTER_OPTIONS), with the defaults filled in."""
    allowed = ADAPTER_OPTIONS.get(adapter, {})
    given = raw.get("options")
    if given is None:
        return dict(allowed)
    if not allowed:
        raise _fail(where, label, "options", f"adapter {adapter!r} has no options "
                                             f"(adapters with options: {', '.join(ADAPTER_OPTIONS)})")
    if not isinstance(given, dict):
        raise _fail(where, label, "options", f"must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(allowed), key=str)
    if unknown:
        raise _fail(where, label, f"options.{unknown[0]}", f"unknown option of adapter {adapter!r}; "
                                                           f"it has: {', '.join(allowed)}")
    out = {**allowed, **given}
    if adapter == "pairwise":
        v = out["verdicts"]
        if (not isinstance(v, dict) or not v or not all(isinstance(k, str) for k in v)
                or not all(m in VERDICT_MEANINGS for m in v.values())):
            raise _fail(where, label, "options.verdicts", f"must map each winner value to one of "
                                                          f"{', '.join(VERDICT_MEANINGS)}, got {v!r}")
        if not {"a", "b"} <= set(v.values()):
            raise _fail(where, label, "options.verdicts", "needs a value meaning a and one meaning b")
        if out["payload"] is not None and (not isinstance(out["payload"], str) or not out["payload"]):
            raise _fail(where, label, "options.payload", f"must be the key of an assistant turn's extra "
                                                         f"object (or null), got {out['payload']!r}")
        if not isinstance(out["payload_in_content"], bool):
            raise _fail(where, label, "options.payload_in_content", f"must be true or false, got "
                                                                     f"{out['payload_in_content']!r}")
    if adapter == "multi_trace":
        for name, choices in (("pair_rule", PAIR_RULES), ("cot_rows", COT_ROWS)):
            if out[name] not in choices:
                raise _fail(where, label, f"options.{name}", f"must be one of {', '.join(choices)}, got {out[name]!r}")
    return out


def _shard_fields(raw: dict, key: str, label: str, where: str,
                  loader: LoaderSpec) -> tuple[int | None, int | None]:
    """`shard_rows` (rows per shard) or `shards` (a fixed number of shards): at most one, a positive
    integer, not with loader offset / limit (a shard's range is over all of the source's rows)."""
    if "shard_rows" in raw and "shards" in raw:
        raise _fail(where, label, "shards", "give shard_rows or shards, not both")
    out: dict[str, int | None] = {"shard_rows": None, "shards": None}
    for name in out:
        if name not in raw:
            continue
        v = raw[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(where, label, name, f"must be a positive integer, got {v!r}")
        if name == "shards" and v > MAX_PARTITIONS:
            raise _fail(where, label, name, f"at most {MAX_PARTITIONS:,} (Dagster's partitions per asset), got {v:,}")
        for lo in ("offset", "limit"):
            if getattr(loader, lo) not in (None, 0):
                raise _fail(where, label, f"loader.{lo}", f"not with {name}: a sharded source's shards "
                                                         f"cover all of its rows")
        if not KEY_RE.match(shard_key(key, 0)):
            raise _fail(where, label, "key", f"too long for a sharded source: its shard keys "
                                             f"({shard_key(key, 0)!r}) must match {KEY_RE.pattern}")
        out[name] = v
    return out["shard_rows"], out["shards"]


_HUB_ROWS: dict[tuple, int] = {}


def hub_rows(spec: SourceSpec, config: str | None, split: str) -> int:
    """Rows of one (config, split) of a hub source: the dataset's split info (no rows downloaded), else
    the rows of the loaded split (a local dataset folder); cached in this process per (id, config,
    split, revision)."""
    lo = spec.loader
    ck = (lo.hub, config, split, lo.revision)
    if ck not in _HUB_ROWS:
        _HUB_ROWS[ck] = _count_hub_rows(spec, config, split)
    return _HUB_ROWS[ck]


def _count_hub_rows(spec: SourceSpec, config: str | None, split: str) -> int:
    lo = spec.loader
    try:
        import datasets

        try:
            info = datasets.load_dataset_builder(lo.hub, config, revision=lo.revision).info
            if info.splits and split in info.splits and info.splits[split].num_examples:
                return int(info.splits[split].num_examples)
        except Exception:  # noqa: BLE001 - no split info: count the split itself
            pass
        return len(datasets.load_dataset(lo.hub, config, split=split, revision=lo.revision))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise RegistryError(f"source '{spec.source_key}': cannot count the rows of hub dataset {lo.hub!r} "
                            f"(config {config!r}, split {split!r}) for sharding: {type(exc).__name__}: {exc}") from None


def _common_fields(raw: dict, label: str, where: str) -> tuple[str, int, str]:
    """licence, priority, dedup_key: checked the same way for every kind."""
    licence = raw.get("licence", raw.get("license"))
    if not isinstance(licence, str) or not licence.strip():
        raise _fail(where, label, "licence", "required (the dataset's licence, e.g. MIT)")
    priority = raw.get("priority", 100)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise _fail(where, label, "priority", f"must be an integer, got {priority!r}")
    dedup_key = raw.get("dedup_key", "record")
    if dedup_key not in DEDUP_KEYS:
        raise _fail(where, label, "dedup_key", f"must be one of {', '.join(DEDUP_KEYS)}, got {dedup_key!r}")
    return licence.strip(), priority, dedup_key


def _model_stages(raw: dict, label: str, where: str) -> tuple[str, ...] | None:
    """`model_stages`: a list of MODEL_STAGES (may be empty), or absent (the kind's default)."""
    if "model_stages" not in raw:
        return None
    value = raw["model_stages"]
    if not isinstance(value, list) or any(s not in MODEL_STAGES for s in value):
        raise _fail(where, label, "model_stages", f"must be a list of {', '.join(MODEL_STAGES)} (or [] for "
                                                  f"none), got {value!r}")
    return tuple(dict.fromkeys(value))


def _parse_synthetic(raw: dict, label: str, where: str, base_dir: str) -> SourceSpec:
    """A `kind: synthetic` source: `generator` (magpie), `generator_config`, `version`; no loader."""
    for name in SYNTHETIC_FORBIDDEN:
        if name in raw:
            raise _fail(where, label, name, f"a {SYNTHETIC} source has no {name} "
                                            f"(its rows are written by its generator)")
    generator = raw.get("generator")
    if generator not in GENERATORS:
        raise _fail(where, label, "generator",
                    f"required for kind {SYNTHETIC!r}: one of {', '.join(GENERATORS)}, got {generator!r}")
    licence, priority, dedup_key = _common_fields(raw, label, where)
    model_stages = _model_stages(raw, label, where)
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, label, "version", f"must be a positive integer, got {version!r}")
    config = _parse_magpie(raw.get("generator_config"), label, where)
    return SourceSpec(
        key=raw["key"], kind=SYNTHETIC, adapter="generic", loader=LoaderSpec(), licence=licence,
        fields=dict(MAGPIE_FIELDS), description=str(raw.get("description") or ""), priority=priority,
        dedup_key=dedup_key, base_dir=base_dir, generator=generator, generator_config=config, version=version,
        model_stages=model_stages,
    )


def _parse_magpie(cfg: Any, label: str, where: str) -> dict[str, Any]:
    """`generator_config` of a magpie source, with the defaults filled in (MAGPIE_DEFAULTS)."""
    if not isinstance(cfg, dict):
        raise _fail(where, label, "generator_config",
                    f"required: a mapping with at least total_prompts (fields: {', '.join(MAGPIE_DEFAULTS)})")
    unknown = sorted(set(cfg) - set(MAGPIE_DEFAULTS), key=str)
    if unknown:
        raise _fail(where, label, f"generator_config.{unknown[0]}",
                    f"unknown field; allowed: {', '.join(MAGPIE_DEFAULTS)}")
    out = {k: cfg.get(k, d) for k, d in MAGPIE_DEFAULTS.items()}

    def bad(name: str, msg: str) -> RegistryError:
        return _fail(where, label, f"generator_config.{name}", msg)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("family", "model"):
        if not isinstance(out[name], str) or not out[name].strip():
            raise bad(name, f"must be a non-empty string, got {out[name]!r}")
    if out["variant"] is not None and (not isinstance(out["variant"], str) or not out["variant"]):
        raise bad("variant", f"must be null or a variant name (math, math.algebra, code, ja, ...), got {out['variant']!r}")
    if "total_prompts" not in cfg:
        raise bad("total_prompts", "required: the number of instructions to generate (a positive integer)")
    for name in ("total_prompts", "ins_max_tokens", "res_max_tokens", "n"):
        if not is_int(out[name]) or out[name] < 1:
            raise bad(name, f"must be a positive integer, got {out[name]!r}")
    if not is_int(out["seed"]) or out["seed"] < 0:
        raise bad("seed", f"must be a non-negative integer, got {out['seed']!r}")
    for name in ("ins_temp", "res_temp"):
        v = out[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 5:
            raise bad(name, f"must be a number from 0 to 5, got {v!r}")
        out[name] = float(v)
    for name in ("ins_top_p", "res_top_p"):
        v = out[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise bad(name, f"must be a number in (0, 1], got {v!r}")
        out[name] = float(v)
    # the family and variant against the pre-query templates (imported here: the registry loads
    # without the asset package otherwise)
    from posttrain_assets.magpie.templates import TemplateError, default_templates

    templates = default_templates()
    if out["family"] not in templates.families:
        raise bad("family", f"unknown pre-query template family {out['family']!r} "
                            f"(known: {', '.join(templates.families)})")
    if out["variant"] is not None:
        try:
            templates.system_prompt(out["family"], out["variant"])
        except TemplateError as exc:
            raise bad("variant", str(exc)) from None
    return out


def parse_registry(data: Any, where: str = "<registry>", base_dir: str = ".") -> Registry:
    if not isinstance(data, dict):
        raise _fail(where, None, None, "the registry must be a mapping with a 'sources' list")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(where, None, sorted(unknown)[0], "unknown top-level field; allowed: version, sources")
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail(where, None, "sources", "must be a non-empty list of sources")
    specs: list[SourceSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_sources):
        spec = _parse_source(raw, i, where, base_dir)
        if spec.key in seen:
            raise _fail(where, spec.key, "key", "duplicate source key")
        seen.add(spec.key)
        specs.append(spec)
    return Registry(path=where, sources=tuple(specs))


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate a sources registry YAML file (default: `default_registry_path()`)."""
    path = str(path or default_registry_path())
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise RegistryError(f"{path}: sources registry not found (set POSTTRAIN_SOURCES?)") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(data, where=path, base_dir=str(Path(path).resolve().parent))
