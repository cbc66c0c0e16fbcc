"""Hygiene stage: the rule-based filters every response goes through before the export, no model.

One clean table per record and synthetic table, per source: `clean_sft_records`, `clean_cot_records`,
`clean_preference_records` (records_job, right after the records), `clean_evolved_instructions`,
`clean_generated_solutions`, `clean_preference_pairs` (synthesis_job, where those ran). Each holds the
rows that pass every `drop` rule plus a `hygiene_flags` column (the `flag` rules that fired); every
dropped row is in the rejects with its first failing rule and the matched span. The export reads a
source's clean table where it exists (export/assets.py)."""

import json
import time
from typing import Literal

import dagster as dg
import pyarrow as pa

from partitions import source_partitions
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common.accounting import Accounting, RowIssue, raw_preview, rejects_table
from ..common.metadata import accounting_check, stage_metadata
from ..common.reason_rules import HYGIENE_METADATA_KEY
from .filtering import FLAGS_COLUMN, Settings, TableSpec, apply_hygiene, lists_summary, per_rule_markdown
from .lists import ListsError, load_lists
from .repetition import RepetitionRules
from .rules import RULES, Thresholds
from .tables import TABLES

GROUP = "hygiene"
Action = Literal["drop", "flag", "off"]


class RuleActions(dg.Config):
    """drop (a counted reject), flag (kept, named in hygiene_flags) or off, per rule (rules.py)."""
    empty: Action = "drop"
    format_tokens: Action = "drop"
    unclosed_fence: Action = "drop"
    identity: Action = "drop"
    knowledge_cutoff: Action = "drop"
    refusal: Action = "drop"  # helpfulness data; `flag` (or a source_actions entry) for safety data
    repetition: Action = "drop"
    truncated: Action = "drop"
    language: Action = "drop"
    script: Action = "drop"
    # flagged, not dropped: a long context with a one-word answer is often right (extraction, labels)
    length: Action = "flag"


class HygieneConfig(dg.Config):
    actions: RuleActions = RuleActions()
    # per source: {source key: {rule: action}} over `actions`, e.g. {hh_rlhf_harmless_base: {refusal: flag}}
    source_actions: dict[str, dict[str, str]] = {}
    lists_path: str = ""  # "" = $POSTTRAIN_HYGIENE_LISTS, else the bundled hygiene/lists.yaml
    min_letters: int = 40  # fewer letters: two texts of one script family (Latin, ...) are not compared
    foreign_script_share: float = 0.05
    foreign_hanzi_share: float = 0.02
    min_kana_share: float = 0.15
    variant_share: float = 0.2
    short_response: int = 3  # words (x2 characters for ja / zh) ...
    long_prompt: int = 50  # ... for a prompt of at least this many words
    refusal_window: int = 300
    allow_think_block: bool = True
    paragraph_repeats: int = 10
    consecutive_sentence_repeats: int = 4
    sentence_repeats: int = 40
    ngram_share: float = 0.3
    workers: int = 0  # processes for tables of 20,000+ rows; 0 = every core


def settings_for(config: HygieneConfig, source: str, registry_actions: dict | None = None) -> Settings:
    """The actions: the config's, then the registry entry's `hygiene`, then the config's `source_actions`."""
    actions = {r: getattr(config.actions, r) for r in RULES}
    actions.update(registry_actions or {})
    actions.update(config.source_actions.get(source, {}))
    rep = RepetitionRules(paragraph_repeats=config.paragraph_repeats, sentence_repeats=config.sentence_repeats,
                          consecutive_sentence_repeats=config.consecutive_sentence_repeats,
                          ngram_share=config.ngram_share)
    th = Thresholds(min_letters=config.min_letters, foreign_script_share=config.foreign_script_share,
                    foreign_hanzi_share=config.foreign_hanzi_share, min_kana_share=config.min_kana_share,
                    variant_share=config.variant_share, short_response=config.short_response,
                    long_prompt=config.long_prompt, refusal_window=config.refusal_window,
                    allow_think_block=config.allow_think_block, repetition=rep)
    settings = Settings(actions=actions, thresholds=th, lists_path=config.lists_path or None)
    settings.check()
    return settings


def _progress(context: dg.AssetExecutionContext, start: float):
    def log(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        context.log.info(f"hygiene {done}/{total} rows ({rate:,.0f} rows/s)")
    return log


def _issues(table: pa.Table, spec: TableSpec, asset: str, dropped: list) -> list[RowIssue]:
    ids = table[spec.id_column].to_pylist() if table.num_rows else []
    out = []
    for i, v in dropped:
        text = table[v.field][i].as_py() if v.field in table.column_names else v.span
        out.append(RowIssue(reason=v.reason, source_row=i, source_file=asset, field=v.field, outcome="removed",
                            detail=f"id {ids[i]!r}: {v.describe()}", raw=raw_preview(text or "")))
    return out


def clean_asset(input_asset: str, name: str, spec: TableSpec):
    @dg.asset(
        name=name, partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
        ins={"table": dg.AssetIn(input_asset)},
        check_specs=[dg.AssetCheckSpec("row_accounting", asset=name, blocking=True)],
        description=f"{input_asset} without the rows a hygiene rule drops (identity / format leaks, repetition, "
                    f"language fidelity, refusals, ...), + `hygiene_flags`; every drop counted with its rule "
                    f"and matched span.",
    )
    def _clean(context: dg.AssetExecutionContext, config: HygieneConfig, storage: StorageResource,
               registry: SourceRegistryResource, table: pa.Table):
        key = context.partition_key
        try:
            spec_of = registry.load().get(key)  # a shard takes its registry entry's settings
            settings = settings_for(config, spec_of.source_key, spec_of.hygiene)
            res = apply_hygiene(table, spec, settings, workers=config.workers,
                                progress=_progress(context, time.perf_counter()))
        except (ValueError, ListsError) as exc:
            raise dg.Failure(description=f"source {key!r}, {input_asset}: {exc}", allow_retries=False) from None
        lists = load_lists(settings.lists_path)
        # the table says what it went through: the export's card reads it (per source, with the table)
        stamp = {"rules": {r: settings.action(r) for r in RULES}, "lists_version": lists.version}
        res.kept = res.kept.replace_schema_metadata({**(res.kept.schema.metadata or {}),
                                                     HYGIENE_METADATA_KEY: json.dumps(stamp)})
        issues = _issues(table, spec, input_asset, res.dropped)
        storage.write_rejects(context.asset_key, key, rejects_table(key, name, issues))
        acc = Accounting.from_issues(table.num_rows, res.kept.num_rows, issues)
        yield dg.Output(res.kept, metadata=stage_metadata(
            res.kept, acc, text_column=spec.prompt,
            preview_columns=[spec.id_column, FLAGS_COLUMN, spec.prompt, spec.fields[0][0]],
            extra={"rules": dg.MetadataValue.json(stamp["rules"]),
                   "per_rule": dg.MetadataValue.json(res.per_rule),
                   "per_rule_table": dg.MetadataValue.md(per_rule_markdown(res, table.num_rows)),
                   "flagged": dg.MetadataValue.json(dict(res.flagged)),
                   "examples": dg.MetadataValue.json(res.examples),
                   "lists": dg.MetadataValue.json(lists_summary(lists)),
                   "rows_per_s": round(res.rows_per_s, 1)}))
        yield accounting_check(acc)

    return _clean


clean_sft_records, clean_cot_records, clean_preference_records, clean_evolved_instructions, \
    clean_generated_solutions, clean_preference_pairs = (clean_asset(source, name, spec)
                                                         for source, (name, spec) in TABLES.items())
