"""The sources registry: one YAML file listing every source dataset, validated on load.

Each entry becomes one key of the `source` dynamic partitions. A bad entry raises
`RegistryError` whose message names the file, the source and the field, e.g.

    partitions/sources.yaml: source 'gsm8k': field 'kind': must be one of attributes, cot, ...

A source of kind `synthetic` has no loader, adapter or fields: its rows are written by a generator
(`generator: magpie` -> the `magpie_instructions` asset) from `generator_config` (the generator's
own defaults and checks, registered by posttrain_assets/magpie/generator_config.py), under a `version` (default 1) that must
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
from typing import Any, Callable

import yaml

from .shards import (MAX_PARTITIONS, ShardError, ShardRange, count_rows, looks_like_shard_key,
                     parse_shard_key, shard_count, shard_key, shard_size)

KINDS = ("prompt", "sft", "cot", "preference", "attributes", "synthetic")
#: a source whose rows a generator writes (no loader, no adapter): `generator` + `generator_config`
SYNTHETIC = "synthetic"
#: generator -> the asset whose partition holds a synthetic source's rows (raw_records reads it)
GENERATOR_ASSETS = {"magpie": "magpie_instructions"}
FORMATS = ("jsonl", "json", "csv", "parquet")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
DEDUP_KEYS = ("record", "prompt")
#: how the generic adapter reads a `prompt` column holding a list of strings (MT-Bench `turns`):
#: 'all' = every string is one user turn of a multi-turn prompt, 'first' = the first string only
TURNS = ("all", "first")

#: `answer_rule`: how a CoT answer is separated from the reasoning when no <think>...</think> tags do it
#: (records/unify.split_reasoning). auto = '####' (GSM8K), else the last \boxed{}, else unsplit;
#: boxed / gsm8k = only that rule; none = everything in `thinking`, answer "" (the seed's LIMO / NuminaMath)
ANSWER_RULES = ("auto", "boxed", "gsm8k", "none")

#: fields a synthetic source must not have (its rows come from the generator, not from files). Its
#: `licence` stays required: the generated data's terms depend on the model that writes it.
SYNTHETIC_FORBIDDEN = ("loader", "adapter", "fields", "turns", "shard_rows", "shards")


class RegistryError(ValueError):
    """A sources registry that cannot be used; the message names file, source and field."""


# --------------------------------------------------------------------------- registrations
# The registry validates what the owners declare: each adapter its fields, required fields, kinds and
# options (posttrain_assets/ingest/adapters.py), each generator its config (posttrain_assets/magpie),
# the label filter its condition parser (posttrain_assets/common/label_filter.py). They register when
# imported; `posttrain_assets.plugins.load_plugins()` imports them (definitions.py and
# `python -m partitions` call it). A registry parsed before that fails loudly (require_registrations).


class EntryError(ValueError):
    """Raised by a registered check: the field inside the entry (`options.verdicts`,
    `generator_config.n`, ...) and what is wrong; the registry adds the file and the source."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AdapterDecl:
    """An adapter as its owner declares it."""

    name: str
    #: logical field -> the raw column read by default (None: optional, unmapped unless the registry maps it)
    fields: dict[str, str | None]
    #: groups of logical fields: at least one group must end up mapped for the adapter to produce anything
    required: tuple[tuple[str, ...], ...]
    #: the kinds its rows need, where not free (pairwise: preference; multi_trace: cot); None = any
    kinds: tuple[str, ...] | None = None
    #: `options`: name -> default; `check_options(options with defaults)` raises EntryError
    options: dict[str, Any] = field(default_factory=dict)
    check_options: Callable[[dict[str, Any]], None] | None = None
    labelled: bool = False  # its records carry human attribute labels (may feed a kind `attributes` source)
    cross_row: bool = False  # joins rows across the whole file (flat messages -> trees): cannot be sharded
    pairs: bool = False  # its rows are preference pairs by themselves (no chosen / rejected mapping needed)


@dataclass(frozen=True)
class GeneratorDecl:
    """A generator of synthetic sources as its owner declares it."""

    name: str
    #: the columns its asset writes, as the generic adapter reads them (a synthetic spec's `fields`)
    fields: dict[str, str]
    #: `generator_config` -> the config with the defaults filled in; raises EntryError (field relative
    #: to the entry, `generator_config.<name>`)
    validate: Callable[[Any], dict[str, Any]]


#: the registered adapters and generators (name -> declaration), and the label filter's parser
ADAPTERS: dict[str, AdapterDecl] = {}
GENERATOR_DECLS: dict[str, GeneratorDecl] = {}
_LABEL_FILTER_PARSER: list[Callable[[str], Any]] = []
_HYGIENE_RULES: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # [(rules, actions)]


def register_adapter(name: str, *, fields: dict[str, str | None], required: tuple[tuple[str, ...], ...],
                     kinds: tuple[str, ...] | None = None, options: dict[str, Any] | None = None,
                     check_options: Callable[[dict[str, Any]], None] | None = None, labelled: bool = False,
                     cross_row: bool = False, pairs: bool = False) -> AdapterDecl:
    """Declare an adapter the registry accepts (`adapter: <name>`); the owner calls it at import."""
    unknown = sorted({f for group in required for f in group} - set(fields))
    if unknown or not required or (kinds is not None and not set(kinds) <= set(KINDS)):
        raise ValueError(f"register_adapter({name!r}): required fields {unknown} not among its fields, "
                         f"no required group, or kinds {kinds!r} not among {KINDS}")
    decl = AdapterDecl(name=name, fields=dict(fields), required=tuple(tuple(g) for g in required), kinds=kinds,
                       options=dict(options or {}), check_options=check_options, labelled=labelled,
                       cross_row=cross_row, pairs=pairs)
    ADAPTERS[name] = decl
    return decl


def register_generator(name: str, *, fields: dict[str, str], validate: Callable[[Any], dict[str, Any]]) -> GeneratorDecl:
    """Declare a generator a synthetic source may name (`generator: <name>`); its asset is GENERATOR_ASSETS[name]."""
    if name not in GENERATOR_ASSETS:
        raise ValueError(f"register_generator({name!r}): no asset writes its rows (GENERATOR_ASSETS: "
                         f"{', '.join(GENERATOR_ASSETS)})")
    decl = GeneratorDecl(name=name, fields=dict(fields), validate=validate)
    GENERATOR_DECLS[name] = decl
    return decl


def register_label_filter_parser(parse: Callable[[str], Any]) -> None:
    """The parser of a `label_filter` condition: `parse(text)` raises ValueError naming what is wrong."""
    _LABEL_FILTER_PARSER[:] = [parse]


def register_hygiene_rules(rules: tuple[str, ...], actions: tuple[str, ...]) -> None:
    """The hygiene stage's rule names and actions: what a source's `hygiene` mapping may say."""
    _HYGIENE_RULES[:] = [(tuple(rules), tuple(actions))]


def require_registrations(where: str) -> None:
    """Fail loudly when the owners have not registered (a registry would otherwise pass unchecked)."""
    missing = [what for what, present in (("adapters", ADAPTERS), ("generators", GENERATOR_DECLS),
                                          ("label filter parser", _LABEL_FILTER_PARSER),
                                          ("hygiene rules", _HYGIENE_RULES)) if not present]
    if missing:
        raise RegistryError(f"{where}: cannot validate the sources registry: nothing registered for "
                            f"{', '.join(missing)}; "
                            "call posttrain_assets.plugins.load_plugins() first (posttrain_assets.definitions "
                            "and `python -m partitions` do)")


def adapter_decl(name: str) -> AdapterDecl:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise RegistryError(f"adapter {name!r} is not registered (registered: {', '.join(ADAPTERS) or 'none'}; "
                            "call posttrain_assets.plugins.load_plugins())") from None


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
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, defaults filled (AdapterDecl.options)
    # hygiene: {rule: drop | flag | off} over the stage's actions for this source (e.g. safety data keeps
    # its refusals: {refusal: flag}); checked against the rules the hygiene stage registers
    hygiene: dict[str, str] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """An adapter option (registry `options`, else its default)."""
        return self.options.get(name, adapter_decl(self.adapter).options.get(name))

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
        empty `loader` and the generic adapter over the generator's columns (GeneratorDecl.fields), so code
        that maps columns never meets an unknown adapter."""
        return self.kind == SYNTHETIC

    def column(self, logical: str) -> str | None:
        """The raw column mapped to a logical field (registry mapping over adapter default)."""
        if logical in self.fields:
            return self.fields[logical]
        return adapter_decl(self.adapter).fields.get(logical)

    def mapped_columns(self) -> dict[str, str]:
        out = {}
        for logical in adapter_decl(self.adapter).fields:
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
                "model_stages", "shard_rows", "shards", "answer_rule", "label_filter", "options", "hygiene"}
_SYNTHETIC_ONLY = ("generator", "generator_config", "version")
_LOADER_KEYS = {"path", "format", "hub", "config", "split", "revision", "limit", "offset"}


def entry_message(where: str, what: str, name: str | None, fld: str | None, msg: str) -> str:
    """'<file>: <what> '<name>': field '<fld>': <msg>', the parts that are known: how a registry
    (this one, the benchmarks registry) names what is wrong."""
    parts = [where]
    if name is not None:
        parts.append(f"{what} {name!r}")
    if fld is not None:
        parts.append(f"field {fld!r}")
    return ": ".join(parts) + ": " + msg


def _fail(where: str, src: str | None, fld: str | None, msg: str) -> RegistryError:
    return RegistryError(entry_message(where, "source", src, fld, msg))


def _parse_source(raw: Any, idx: int, where: str, base_dir: str) -> SourceSpec:
    """One registry entry -> its SourceSpec, in the order a reader checks it: the key, the kind (a
    synthetic source branches off), the adapter, the fields every kind has, the field map, the loader,
    sharding, the adapter-specific settings, then whether the mapped fields are enough."""
    key = _entry_key(raw, idx, where)
    label = key
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(where, label, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == SYNTHETIC:
        return _parse_synthetic(raw, label, where, base_dir)
    decl = _entry_adapter(raw, kind, label, where)
    licence, priority, dedup_key = _common_fields(raw, label, where)
    model_stages = _model_stages(raw, label, where)
    fields = _field_map(raw, decl, label, where)
    loader = _loader(raw, label, where)
    shard_rows, shards = _shard_fields(raw, key, label, where, loader)
    if (shard_rows or shards) and decl.cross_row:
        raise _fail(where, label, "shard_rows" if shard_rows else "shards",
                    f"adapter {decl.name!r} rebuilds message trees across the whole file: its rows cannot be "
                    f"sharded (export one tree per row and use adapter 'oasst_tree')")
    turns, answer_rule = _reading_rules(raw, decl, label, where)
    if decl.kinds is not None and kind not in decl.kinds:
        raise _fail(where, label, "kind", f"adapter {decl.name!r} writes {' / '.join(decl.kinds)} rows: "
                                          f"kind must be {' or '.join(decl.kinds)}, got {kind!r}")
    spec = SourceSpec(
        key=key, kind=kind, adapter=decl.name, loader=loader, licence=licence, fields=fields,
        description=str(raw.get("description") or ""), priority=priority, dedup_key=dedup_key, turns=turns,
        base_dir=base_dir, model_stages=model_stages, shard_rows=shard_rows, shards=shards, answer_rule=answer_rule,
        label_filter=_label_filter(raw, label, where), options=_parse_options(raw, decl, label, where),
        hygiene=_hygiene(raw, label, where),
    )
    _check_mapped(spec, decl, label, where)
    return spec


def _entry_key(raw: Any, idx: int, where: str) -> str:
    """The entry is a mapping with a valid key (not shard-like) and only known fields."""
    label = f"#{idx}"
    if not isinstance(raw, dict):
        raise _fail(where, label, None, f"each source must be a mapping, got {type(raw).__name__}")
    key = raw.get("key")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise _fail(where, label, "key",
                    f"must match {KEY_RE.pattern} (lowercase, digits, _ . -), got {key!r}")
    if looks_like_shard_key(key):
        raise _fail(where, key, "key", "ends like a shard key (.sNNNN), which is reserved for the "
                                       "partitions of a sharded source (shard_rows / shards)")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise _fail(where, key, sorted(unknown)[0],
                    f"unknown field; allowed: {', '.join(sorted(_SOURCE_KEYS))}")
    return key


def _entry_adapter(raw: dict, kind: str, label: str, where: str) -> AdapterDecl:
    """A file-backed entry: no synthetic-only field, and a registered adapter (default generic)."""
    for name in _SYNTHETIC_ONLY:
        if name in raw:
            raise _fail(where, label, name, f"only a source of kind {SYNTHETIC!r} has it, not kind {kind!r}")
    adapter = raw.get("adapter", "generic")
    if adapter not in ADAPTERS:
        raise _fail(where, label, "adapter",
                    f"must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    return ADAPTERS[adapter]


def _field_map(raw: dict, decl: AdapterDecl, label: str, where: str) -> dict[str, str]:
    """`fields`: logical field (one the adapter declares) -> raw column name."""
    fields = raw.get("fields") or {}
    if not isinstance(fields, dict):
        raise _fail(where, label, "fields", "must be a mapping of logical field -> column")
    for logical, col in fields.items():
        if logical not in decl.fields:
            raise _fail(where, label, f"fields.{logical}",
                        f"adapter {decl.name!r} has no field {logical!r}; "
                        f"it knows: {', '.join(decl.fields)}")
        if col is not None and (not isinstance(col, str) or not col):
            raise _fail(where, label, f"fields.{logical}", f"must be a column name, got {col!r}")
    return dict(fields)


def _loader(raw: dict, label: str, where: str) -> LoaderSpec:
    """`loader`: exactly one of a local path / glob or a hub dataset, and how to read it."""
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
    return LoaderSpec(
        path=loader_raw.get("path"), format=fmt, hub=loader_raw.get("hub"),
        config=None if "config" in many else loader_raw.get("config"),
        split="train" if "split" in many else (loader_raw.get("split") or "train"),
        revision=loader_raw.get("revision"), limit=limit, offset=offset,
        configs=many.get("config", ()), splits=many.get("split", ()),
    )


def _reading_rules(raw: dict, decl: AdapterDecl, label: str, where: str) -> tuple[str, str]:
    """`turns` (generic adapter only) and `answer_rule`."""
    turns = raw.get("turns", "all")
    if turns not in TURNS:
        raise _fail(where, label, "turns", f"must be one of {', '.join(TURNS)}, got {turns!r}")
    if "turns" in raw and decl.name != "generic":
        raise _fail(where, label, "turns",
                    f"only the generic adapter reads it (a list of strings as prompt), not {decl.name!r}")
    answer_rule = raw.get("answer_rule", "auto")
    if answer_rule not in ANSWER_RULES:
        raise _fail(where, label, "answer_rule", f"must be one of {', '.join(ANSWER_RULES)}, got {answer_rule!r}")
    return turns, answer_rule


def _check_mapped(spec: SourceSpec, decl: AdapterDecl, label: str, where: str) -> None:
    """The mapped fields are enough for the adapter and the kind; kind `attributes` needs labels."""
    mapped = spec.mapped_columns()
    if not any(all(f in mapped for f in group) for group in decl.required):
        need = " or ".join("+".join(g) for g in decl.required)
        raise _fail(where, label, "fields", f"adapter {decl.name!r} needs {need} mapped")
    if spec.kind == "preference" and not decl.pairs and not ({"chosen", "rejected"} <= set(mapped)):
        raise _fail(where, label, "fields", "kind 'preference' needs 'chosen' and 'rejected' mapped")
    if spec.kind == "attributes" and not decl.labelled:
        labelled = [a.name for a in ADAPTERS.values() if a.labelled]
        raise _fail(where, label, "adapter", f"kind 'attributes' needs an adapter whose rows carry human "
                                             f"labels: one of {', '.join(labelled)}, got {decl.name!r}")


def _label_filter(raw: dict, label: str, where: str) -> tuple[str, ...]:
    """`label_filter`: a condition or a list of them ('pass_rate_72b_tir <= 0.1', '0.2 <= x < 0.8'), all
    checked here by the registered parser (posttrain_assets/common/label_filter.py)."""
    if "label_filter" not in raw:
        return ()
    value = raw["label_filter"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise _fail(where, label, "label_filter", f"must be a condition or a list of conditions "
                                                  f"('COLUMN <= NUMBER', 'LOW <= COLUMN < HIGH', ...), got {value!r}")
    (parse,) = _LABEL_FILTER_PARSER  # registered by its owner (require_registrations checked it)
    for i, text in enumerate(items):
        try:
            parse(text)
        except ValueError as exc:
            raise _fail(where, label, f"label_filter[{i}]" if len(items) > 1 or not isinstance(value, str)
                        else "label_filter", str(exc)) from None
    return tuple(items)


def _hygiene(raw: dict, label: str, where: str) -> dict[str, str]:
    """`hygiene`: {rule: action} for this source, over the hygiene stage's defaults."""
    value = raw.get("hygiene", {})
    (rules, actions), = _HYGIENE_RULES  # registered by its owner (require_registrations checked it)
    if not isinstance(value, dict):
        raise _fail(where, label, "hygiene", f"must be a mapping of rule -> action, e.g. {{refusal: flag}}, got {value!r}")
    for rule, action in value.items():
        if rule not in rules:
            raise _fail(where, label, f"hygiene.{rule}", f"not a hygiene rule: one of {', '.join(rules)}")
        if action not in actions:
            raise _fail(where, label, f"hygiene.{rule}", f"must be one of {', '.join(actions)}, got {action!r}")
    return dict(value)


def _parse_options(raw: dict, decl: AdapterDecl, label: str, where: str) -> dict[str, Any]:
    """`options` of the adapters that declare some, with the defaults filled in, checked by the adapter."""
    allowed = decl.options
    given = raw.get("options")
    if given is None:
        return dict(allowed)
    if not allowed:
        raise _fail(where, label, "options", f"adapter {decl.name!r} has no options "
                                             f"(adapters with options: {', '.join(a for a, d in ADAPTERS.items() if d.options)})")
    if not isinstance(given, dict):
        raise _fail(where, label, "options", f"must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(allowed), key=str)
    if unknown:
        raise _fail(where, label, f"options.{unknown[0]}", f"unknown option of adapter {decl.name!r}; "
                                                           f"it has: {', '.join(allowed)}")
    out = {**allowed, **given}
    if decl.check_options is not None:
        try:
            decl.check_options(out)
        except EntryError as exc:
            raise _fail(where, label, exc.field, str(exc)) from None
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
    """A `kind: synthetic` source: `generator` (a registered one), `generator_config`, `version`; no loader."""
    for name in SYNTHETIC_FORBIDDEN:
        if name in raw:
            raise _fail(where, label, name, f"a {SYNTHETIC} source has no {name} "
                                            f"(its rows are written by its generator)")
    generator = raw.get("generator")
    if generator not in GENERATOR_DECLS:
        raise _fail(where, label, "generator",
                    f"required for kind {SYNTHETIC!r}: one of {', '.join(GENERATOR_DECLS)}, got {generator!r}")
    decl = GENERATOR_DECLS[generator]
    licence, priority, dedup_key = _common_fields(raw, label, where)
    model_stages = _model_stages(raw, label, where)
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, label, "version", f"must be a positive integer, got {version!r}")
    try:
        config = decl.validate(raw.get("generator_config"))
    except EntryError as exc:
        raise _fail(where, label, exc.field, str(exc)) from None
    return SourceSpec(
        key=raw["key"], kind=SYNTHETIC, adapter="generic", loader=LoaderSpec(), licence=licence,
        fields=dict(decl.fields), description=str(raw.get("description") or ""), priority=priority,
        dedup_key=dedup_key, base_dir=base_dir, generator=generator, generator_config=config, version=version,
        model_stages=model_stages, hygiene=_hygiene(raw, label, where),
    )


def parse_registry(data: Any, where: str = "<registry>", base_dir: str = ".") -> Registry:
    if not isinstance(data, dict):
        raise _fail(where, None, None, "the registry must be a mapping with a 'sources' list")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(where, None, sorted(unknown)[0], "unknown top-level field; allowed: version, sources")
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail(where, None, "sources", "must be a non-empty list of sources")
    require_registrations(where)
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
