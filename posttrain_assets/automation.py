"""Declarative automation: which assets Dagster materialises by itself, and when.

Adding a source to the registry is all a user does: `sources_registry_sensor` adds its `source`
partition, then the automation sensor (`posttrain_automation_sensor`, running by default) requests

* the per-source chain without a model, for a new partition or after an upstream update (`eager`):
  magpie_instructions (only for sources that are not synthetic: an empty partition, no model),
  raw_records -> merged_prompts -> prompt_embeddings, attribute_training_data;
* the global dedup (dedup_clusters + report + summary) at most once per tick of `POSTTRAIN_DEDUP_CRON`
  (default hourly), when any source's prompts or embeddings changed since the last dedup, once no
  source is missing them and none is running or requested (`dedup_cooldown`);
* deduplicated_prompts of every source after each dedup (`after_dedup`), then the records (`eager`)
  and their clean tables (the hygiene rules, no model: `eager`; an LLM output's clean table follows the
  output wherever it was materialised);
* the benchmark index once (`missing_index`; re-materialise it after changing the benchmarks registry),
  every source's contamination check after its records (`eager`), the contamination report once every
  source's check exists and none is running or requested (`report_after_checks`);
* the hf_parquet export when the records (or an LLM output) changed, once no record, check or its
  input is missing, running or requested (`export_after_records`).

The LLM stages (and magpie_instructions of synthetic sources) stay on demand: they cost money or GPU
hours. `POSTTRAIN_EAGER_LLM` (comma-separated asset names) makes the named ones `eager` as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import dagster as dg

from partitions.registry import RegistryError
from resources.sources import SourceRegistryResource

from .common import asset_names as A

AC = dg.AutomationCondition

#: the cooldown of the global dedup: at most one dedup per tick of this cron schedule
DEDUP_CRON_ENV = "POSTTRAIN_DEDUP_CRON"
DEFAULT_DEDUP_CRON = "0 * * * *"
#: LLM assets a user wants eager anyway (comma-separated names)
EAGER_LLM_ENV = "POSTTRAIN_EAGER_LLM"

GENERATOR = A.MAGPIE_INSTRUCTIONS  # LLM for synthetic sources, an empty partition for the others
RECORDS = (A.SFT_RECORDS, A.COT_RECORDS, A.PREFERENCE_RECORDS)
#: the hygiene rules (no model): a record table's clean table follows it, and an LLM output's follows the
#: output where it was materialised (eager waits for a missing input: a source without one gets none)
CLEAN_RECORDS = (A.CLEAN_SFT_RECORDS, A.CLEAN_COT_RECORDS, A.CLEAN_PREFERENCE_RECORDS)
CLEAN_SYNTHETIC = (A.CLEAN_EVOLVED_INSTRUCTIONS, A.CLEAN_GENERATED_SOLUTIONS, A.CLEAN_PREFERENCE_PAIRS)
EAGER = (A.RAW_RECORDS, A.MERGED_PROMPTS, A.PROMPT_EMBEDDINGS, A.ATTRIBUTE_TRAINING_DATA, *RECORDS, A.CONTAMINATION,
         *CLEAN_RECORDS, *CLEAN_SYNTHETIC)
INDEX = A.BENCHMARK_INDEX
REPORT = A.CONTAMINATION_REPORT
DEDUP = (A.DEDUP_CLUSTERS, A.DEDUP_CLUSTER_REPORT, A.DEDUP_SUMMARY)  # one multi-asset: one condition
AFTER_DEDUP = A.DEDUPLICATED_PROMPTS
EXPORT = A.HF_PARQUET
AUTOMATED = (GENERATOR, *EAGER, *DEDUP, AFTER_DEDUP, INDEX, REPORT, EXPORT)

#: what docs/jobs.md offers for the LLM stages (opt in through POSTTRAIN_EAGER_LLM)
LLM_EAGER = AC.eager()


class SourceNotSynthetic(AC):
    """True for the `source` partitions whose registry entry is not synthetic (no generator, so
    magpie_instructions writes an empty partition without a model). A custom condition: it needs the
    sensor to run in the code location (`use_user_code_server=True`)."""

    def __init__(self, registry: SourceRegistryResource):
        self.registry = registry

    @property
    def name(self) -> str:
        return "source_not_synthetic"

    @property
    def description(self) -> str:
        return "the source's registry entry is not synthetic (no model runs)"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        try:
            reg = self.registry.load()
        except RegistryError as exc:
            context.log.warning(f"sources registry invalid, no {GENERATOR} partition requested: {exc}")
            return dg.AutomationResult(context, context.get_empty_subset())
        free = {k for k in candidates.expensively_compute_partition_keys()  # find: a shard key too, uncounted
                if (spec := reg.find(k)) is not None and not spec.synthetic}
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(free))


def _deps_updated(*keys: str) -> AC:
    return AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(*keys))


def generator_condition(registry: SourceRegistryResource) -> AC:
    """A new partition of a source that is not synthetic (free); synthetic ones stay on demand."""
    return (AC.on_missing() & SourceNotSynthetic(registry)).with_label("on_missing_if_not_synthetic")


def dedup_condition(cron: str, timezone: str = "UTC") -> AC:
    """Once per cron tick at most, when any source's prompts / embeddings changed since the last
    dedup; waits while any of them is missing, running or requested (the fan-in reads them all)."""
    busy = AC.in_progress() | AC.will_be_requested()
    return (
        AC.cron_tick_passed(cron, timezone).since_last_handled()
        & AC.any_deps_updated().since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_match(busy).with_label("any_deps_in_progress_or_requested")
        & ~AC.in_progress()
    ).with_label(f"dedup_cooldown({cron})")


def after_dedup_condition() -> AC:
    """After each dedup, and only after one newer than the partition's own merged prompts (a
    partition never reads clusters that were made without its rows)."""
    handled = AC.newly_requested() | AC.newly_updated() | AC.initial_evaluation()
    return (
        _deps_updated(DEDUP[0]).since(handled | _deps_updated(A.MERGED_PROMPTS)).with_label("dedup_since_own_prompts")
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("after_dedup")


def fan_in_condition(required: Sequence[str], label: str) -> AC:
    """When any input changed; every partition of the `required` inputs must exist (the others are
    optional), and no input nor its own input may be running or requested, so that one run follows
    the updates of all sources."""
    busy = AC.in_progress() | AC.will_be_requested()
    return (
        AC.any_deps_updated().since_last_handled()
        & ~AC.any_deps_missing().allow(dg.AssetSelection.assets(*required))
        & ~AC.any_deps_match(busy | AC.any_deps_match(busy)).with_label("upstream_in_progress_or_requested")
        & ~AC.in_progress()
    ).with_label(label)


def export_condition() -> AC:
    """When any input changed (the records; an LLM output materialised on demand); every source's
    records, clean records, contamination check and the report must exist (the LLM outputs and their
    clean tables are optional), and no
    record nor its input may be running or requested, so that one export follows the records of all
    sources after a dedup."""
    return fan_in_condition((*RECORDS, *CLEAN_RECORDS, A.CONTAMINATION, REPORT), "export_after_records")


def index_condition() -> AC:
    """The benchmark index whenever it is missing (a first deploy included: `on_missing` would skip an
    asset missing at the first evaluation), not while it runs, not again after a failed build."""
    return (AC.missing() & ~AC.in_progress() & ~AC.execution_failed()).with_label("missing_index")


def report_condition() -> AC:
    """The contamination report after every source's check, once none is running or requested."""
    return fan_in_condition((A.CONTAMINATION, INDEX), "report_after_checks")


def dedup_cron(env: dict | None = None) -> str:
    cron = (env if env is not None else os.environ).get(DEDUP_CRON_ENV) or DEFAULT_DEDUP_CRON
    try:
        AC.cron_tick_passed(cron)
    except Exception:
        raise ValueError(f"{DEDUP_CRON_ENV}={cron!r}: not a cron schedule (e.g. '0 * * * *')") from None
    return cron


def eager_llm(env: dict | None = None) -> tuple[str, ...]:
    raw = (env if env is not None else os.environ).get(EAGER_LLM_ENV, "")
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def conditions(registry: SourceRegistryResource, cron: str, eager_llm_assets: Sequence[str] = ()) -> dict[str, AC]:
    """{asset name: its automation condition}; the assets not named here run on demand only."""
    out: dict[str, AC] = {GENERATOR: generator_condition(registry)}
    out.update({k: AC.eager() for k in EAGER})
    dedup = dedup_condition(cron)
    out.update({k: dedup for k in DEDUP})
    out[AFTER_DEDUP] = after_dedup_condition()
    out[INDEX] = index_condition()
    out[REPORT] = report_condition()
    out[EXPORT] = export_condition()
    clash = sorted(set(eager_llm_assets) & (set(AUTOMATED) - {GENERATOR}))
    if clash:
        raise ValueError(f"{EAGER_LLM_ENV}: {', '.join(clash)} already automated (name LLM stages only)")
    out.update({k: LLM_EAGER for k in eager_llm_assets})
    return out


def with_automation(assets: Iterable, registry: SourceRegistryResource | None = None, cron: str | None = None,
                    eager_llm_assets: Sequence[str] | None = None) -> list:
    """The assets with their automation conditions set (the stage packages carry no policy).
    `registry`: where SourceNotSynthetic reads the sources (default: the registry resource's default,
    $POSTTRAIN_SOURCES or partitions/sources.yaml, which is what sources_registry_sensor reads)."""
    assets = list(assets)
    by_name = conditions(registry or SourceRegistryResource(), cron or dedup_cron(),
                         eager_llm() if eager_llm_assets is None else eager_llm_assets)
    names = {spec.key.to_user_string() for a in assets for spec in a.specs}
    unknown = sorted(set(by_name) - names)
    if unknown:
        raise ValueError(f"automation names unknown assets: {', '.join(unknown)}")

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        cond = by_name.get(spec.key.to_user_string())
        return spec.replace_attributes(automation_condition=cond) if cond is not None else spec

    return dg.map_asset_specs(apply, assets)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "posttrain_automation_sensor", target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    use_user_code_server=True,  # SourceNotSynthetic is custom Python: evaluated in the code location
    description="Evaluates the assets' automation conditions (posttrain_assets/automation.py): the "
                "per-source chain of a new source, the global dedup once per cooldown tick, the records, "
                "the export. LLM stages are on demand.")
