"""Declarative automation on the real definitions (`posttrain_assets.definitions.defs`), evaluated in
process on an ephemeral instance at explicit evaluation times (no sleeping, no daemon): a source is
added the way a user adds one (a registry file, then the registry sensor's evaluation), and each
evaluation's requests are asserted exactly (asset -> partitions).

The first test runs every request for real (the real assets, Parquet, the embedder, the dedup, the
export). The cooldown tests with 20 sources report the materialisations instead
(`report_runless_asset_event`): the conditions read only the event log, and 20 real chains would
only add CPU minutes to what the first test already proves runs."""

import datetime as dt
import functools
import os
from contextlib import contextmanager

import dagster as dg
import pytest

from posttrain_assets import automation
from posttrain_assets.automation import AUTOMATED, DEFAULT_DEDUP_CRON
from posttrain_assets.definitions import defs
from posttrain_assets.sensors import sources_registry_sensor

from .conftest import REPO
from .helpers import SAMPLE, dagster_dev, mat_metadata, resources_for, write_registry

CHAIN = ("magpie_instructions", "raw_records", "merged_prompts", "prompt_embeddings", "attribute_training_data")
DEDUP = ("dedup_clusters", "dedup_cluster_report", "dedup_summary")
AFTER_DEDUP = ("deduplicated_prompts", "sft_records", "cot_records", "preference_records", "contamination",
               "clean_sft_records", "clean_cot_records", "clean_preference_records")
INDEX = "benchmark_index"  # global, built whenever it is missing (the first evaluation included)
GSM8K = {"key": "gsm8k", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
         "loader": {"path": str(SAMPLE / "gsm8k/train_300.jsonl")}}
SYNTHETIC = {"key": "magpie_new", "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
             "generator_config": {"total_prompts": 4, "n": 2}}


def at(hh: int, mm: int, ss: int = 0) -> dt.datetime:
    """A time on one day; the default cron ticks at every full hour."""
    return dt.datetime(2030, 1, 7, hh, mm, ss, tzinfo=dt.timezone.utc)


class Automation:
    """The automation sensor's evaluations, one after another (the cursor carried over)."""

    def __init__(self, instance):
        self.instance, self.cursor = instance, None

    def tick(self, when: dt.datetime) -> dict[str, set]:
        with partitions_read_once(self.instance):
            result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor,
                                                       evaluation_time=when)
        self.cursor = result.cursor
        requested = {}
        for key in defs.resolve_asset_graph().get_all_asset_keys():
            parts = result.get_requested_partitions(key)
            if parts:
                requested[key.to_user_string()] = set(parts)
        return requested


@contextmanager
def partitions_read_once(instance):
    """The instance's dynamic partitions read once per partitions definition for the length of one
    evaluation, as the daemon's evaluation reads them (its CachingInstanceQueryer). Dagster's
    evaluate_automation_conditions builds the new cursor against the bare instance: one query per
    partitioned subset it serialises, ~20,000 per 20-source test and most of its time. Nothing adds a
    partition during an evaluation (add_sources does, between evaluations)."""
    read = functools.lru_cache(maxsize=None)(instance.get_dynamic_partitions)
    instance.get_dynamic_partitions = read
    try:
        yield
    finally:
        del instance.get_dynamic_partitions  # the class's method again


def add_sources(instance, registry_path, sources, monkeypatch) -> list[str]:
    """What a user does: write the registry; what the registry sensor then does (its own evaluation,
    with the definitions' registry resource, which reads $POSTTRAIN_SOURCES)."""
    write_registry(registry_path, sources)
    monkeypatch.setenv("POSTTRAIN_SOURCES", str(registry_path))
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        result = sources_registry_sensor(ctx)
    added = []
    for req in result.dynamic_partitions_requests:  # what the daemon does with them
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        added += list(req.partition_keys)
    return added


def index_built(auto, instance, when: dt.datetime) -> None:
    """The first evaluation requests the missing benchmark index (and nothing else: no source yet); its
    materialisation reported."""
    assert auto.tick(when) == {INDEX: {None}}
    report(instance, [INDEX])


def chain_of(*keys: str) -> dict[str, set]:
    return {a: set(keys) for a in CHAIN}


def report(instance, assets, partitions=(None,)) -> None:
    """Materialisations reported to the event log (the cooldown tests; see the module docstring)."""
    for asset in assets:
        for p in partitions:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=p))


def prompt_sources(tmp_path, keys) -> list[dict]:
    out = []
    for k in keys:
        path = tmp_path / f"{k}.jsonl"
        path.write_text(f'{{"instruction": "Question {k}?"}}\n')
        out.append({"key": k, "kind": "prompt", "adapter": "generic", "fields": {"prompt": "instruction"},
                    "loader": {"path": str(path)}, "licence": "MIT"})
    return out


def test_conditions_set_in_one_place_and_the_sensor_runs_by_default():
    graph = defs.resolve_asset_graph()
    labels = {k.to_user_string(): (graph.get(k).automation_condition.get_label()
                                   if graph.get(k).automation_condition else None)
              for k in graph.get_all_asset_keys()}
    cooldown = f"dedup_cooldown({DEFAULT_DEDUP_CRON})"
    assert {k: v for k, v in labels.items() if v} == {
        "magpie_instructions": "on_missing_if_not_synthetic",
        "raw_records": "eager", "merged_prompts": "eager", "prompt_embeddings": "eager",
        "attribute_training_data": "eager", "sft_records": "eager", "cot_records": "eager",
        "preference_records": "eager", "dedup_clusters": cooldown, "dedup_cluster_report": cooldown,
        "dedup_summary": cooldown, "deduplicated_prompts": "after_dedup", "hf_parquet": "export_after_records",
        "benchmark_index": "missing_index", "contamination": "eager", "contamination_report": "report_after_checks",
        **{f"clean_{t}": "eager" for t in ("sft_records", "cot_records", "preference_records", "evolved_instructions",
                                           "generated_solutions", "preference_pairs")}}
    # every LLM stage (and the attribute model) on demand
    assert sorted(k for k, v in labels.items() if v is None) == [
        "attribute_labelled_sft", "attribute_model", "difficulty_scores", "evolved_instructions",
        "filtered_instructions", "generated_solutions", "hard_problems", "preference_pairs",
        "quality_tags", "selected_seeds", "solution_pass_rates", "steerlm_sft"]
    assert set(AUTOMATED) == {k for k, v in labels.items() if v}
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert set(sensors) == {"sources_registry_sensor", "posttrain_automation_sensor"}  # no default sensor
    auto = sensors["posttrain_automation_sensor"]
    assert auto.default_status == dg.DefaultSensorStatus.RUNNING
    assert auto.sensor_type.value == "AUTOMATION"  # evaluated in the code location (custom condition)
    assert sensors["sources_registry_sensor"].default_status == dg.DefaultSensorStatus.RUNNING


def test_configuration_from_the_environment():
    assert automation.dedup_cron({}) == "0 * * * *"
    assert automation.dedup_cron({"POSTTRAIN_DEDUP_CRON": "*/15 * * * *"}) == "*/15 * * * *"
    with pytest.raises(ValueError, match=r"POSTTRAIN_DEDUP_CRON='every hour': not a cron schedule"):
        automation.dedup_cron({"POSTTRAIN_DEDUP_CRON": "every hour"})
    assert automation.eager_llm({"POSTTRAIN_EAGER_LLM": "difficulty_scores, selected_seeds"}) == \
        ("difficulty_scores", "selected_seeds")
    from posttrain_assets.definitions import all_assets

    opted = automation.with_automation(all_assets, cron="*/15 * * * *",
                                       eager_llm_assets=("difficulty_scores", "magpie_instructions"))
    label = {spec.key.to_user_string(): spec.automation_condition.get_label() for a in opted for spec in a.specs
             if spec.key.to_user_string() in ("difficulty_scores", "magpie_instructions", "dedup_clusters")}
    assert label == {"difficulty_scores": "eager", "magpie_instructions": "eager",
                     "dedup_clusters": "dedup_cooldown(*/15 * * * *)"}
    with pytest.raises(ValueError, match="POSTTRAIN_EAGER_LLM: raw_records already automated"):
        automation.with_automation(all_assets, eager_llm_assets=("raw_records",))
    with pytest.raises(ValueError, match="automation names unknown assets: difficulty_score$"):
        automation.with_automation(all_assets, eager_llm_assets=("difficulty_score",))


def test_a_new_source_runs_its_chain_then_dedup_records_and_export_for_real(tmp_path, instance, monkeypatch):
    auto = Automation(instance)
    assert auto.tick(at(10, 0, 30)) == {INDEX: {None}}  # the first evaluation: no partitions yet, no index
    assert add_sources(instance, tmp_path / "sources.yaml", [GSM8K], monkeypatch) == ["gsm8k"]
    resources = resources_for(str(tmp_path / "storage"), tmp_path / "sources.yaml")
    # (n-grams only: the embedder's candidates are tests/test_decontamination.py's)
    assert dg.materialize(defs.assets, selection=[INDEX], instance=instance, resources=resources,
                          run_config={"ops": {INDEX: {"config": {"semantic": False}}}}).success

    def run(requested: dict[str, set]):
        (partition,) = set.union(*requested.values())
        res = dg.materialize(defs.assets, selection=sorted(requested), partition_key=partition,
                             instance=instance, resources=resources)
        assert res.success
        return res

    requested = auto.tick(at(10, 5))
    assert requested == chain_of("gsm8k")  # one source's chain, no LLM stage, nothing global
    res = run(requested)
    assert mat_metadata(res, "magpie_instructions")["dagster/row_count"] == 0  # not synthetic: no model
    assert mat_metadata(res, "prompt_embeddings")["dagster/row_count"] == 300
    assert auto.tick(at(10, 6)) == {}
    assert auto.tick(at(10, 59, 59)) == {}  # the cooldown: dedup waits for the tick
    assert auto.tick(at(11, 0, 30)) == {a: {None} for a in DEDUP}
    run({a: {None} for a in DEDUP})
    requested = auto.tick(at(11, 1))
    assert requested == {a: {"gsm8k"} for a in AFTER_DEDUP}
    res = run(requested)
    # kind cot; every record checked against the benchmarks (GSM8K train rows vs the GSM8K test items)
    assert [mat_metadata(res, a)["dagster/row_count"] for a in AFTER_DEDUP] == [300, 0, 300, 0, 300, 0, 300, 0]
    assert auto.tick(at(11, 2)) == {"contamination_report": {None}}
    run({"contamination_report": {None}})
    assert auto.tick(at(11, 3)) == {"hf_parquet": {None}}
    export = mat_metadata(run({"hf_parquet": {None}}), "hf_parquet")
    assert export["rows_cot"] + export["contaminated_left_out"] == 300
    assert (export["rows_sft"], export["dagster/row_count"]) == (0, 2)  # shard + card
    assert auto.tick(at(11, 4)) == {}
    assert auto.tick(at(12, 0, 30)) == {}  # a tick without a change: no dedup


def test_twenty_sources_one_dedup_per_cooldown_tick(tmp_path, instance, monkeypatch):
    auto = Automation(instance)
    keys = [f"s{i:02d}" for i in range(20)]
    sources = prompt_sources(tmp_path, keys)
    reg = tmp_path / "sources.yaml"
    index_built(auto, instance, at(10, 0, 30))
    # ten sources, their chains done; ten more within the same hour
    assert add_sources(instance, reg, sources[:10], monkeypatch) == keys[:10]
    assert auto.tick(at(10, 5)) == chain_of(*keys[:10])
    report(instance, CHAIN, keys[:10])
    assert auto.tick(at(10, 10)) == {}
    assert add_sources(instance, reg, sources, monkeypatch) == keys[10:]
    assert auto.tick(at(10, 40)) == chain_of(*keys[10:])
    report(instance, CHAIN, keys[10:])
    assert auto.tick(at(10, 50)) == {}
    # the tick: exactly one dedup for the twenty sources, then none until the next tick
    assert auto.tick(at(11, 0, 30)) == {a: {None} for a in DEDUP}
    assert auto.tick(at(11, 1)) == {}
    report(instance, DEDUP)
    assert auto.tick(at(11, 2)) == {a: set(keys) for a in AFTER_DEDUP}
    report(instance, AFTER_DEDUP, keys)
    assert auto.tick(at(11, 3)) == {"contamination_report": {None}}
    report(instance, ["contamination_report"])
    assert auto.tick(at(11, 4)) == {"hf_parquet": {None}}
    report(instance, ["hf_parquet"])
    # one source's prompts change (re-ingested) within the next window: its chain re-runs, dedup waits
    report(instance, ["raw_records"], ["s03"])
    # (its contamination check too: the semantic candidates read the new embeddings)
    assert auto.tick(at(11, 20)) == {"merged_prompts": {"s03"}, "prompt_embeddings": {"s03"},
                                     "attribute_training_data": {"s03"}, "contamination": {"s03"}}
    report(instance, ["merged_prompts", "prompt_embeddings", "attribute_training_data", "contamination"], ["s03"])
    assert auto.tick(at(11, 30)) == {"contamination_report": {None}}  # a changed check: a new report, export
    report(instance, ["contamination_report"])
    assert auto.tick(at(11, 31)) == {"hf_parquet": {None}}
    report(instance, ["hf_parquet"])
    assert auto.tick(at(11, 59)) == {}
    assert auto.tick(at(12, 0, 30)) == {a: {None} for a in DEDUP}
    assert auto.tick(at(12, 1)) == {}


def test_a_tick_during_ingest_waits_for_every_chain_then_dedups_once(tmp_path, instance, monkeypatch):
    auto = Automation(instance)
    keys = [f"s{i:02d}" for i in range(20)]
    index_built(auto, instance, at(10, 50))
    add_sources(instance, tmp_path / "sources.yaml", prompt_sources(tmp_path, keys), monkeypatch)
    assert auto.tick(at(10, 55)) == chain_of(*keys)
    report(instance, CHAIN, keys[:12])  # eight chains still to finish when the hour ticks
    assert auto.tick(at(11, 0, 30)) == {}
    report(instance, CHAIN, keys[12:19])
    assert auto.tick(at(11, 5)) == {}
    report(instance, CHAIN, keys[19:])
    assert auto.tick(at(11, 10)) == {a: {None} for a in DEDUP}  # the hour's tick, used once
    assert auto.tick(at(11, 11)) == {}


def test_a_synthetic_source_waits_for_its_on_demand_generation(tmp_path, instance, monkeypatch):
    auto = Automation(instance)
    index_built(auto, instance, at(10, 0, 30))
    added = add_sources(instance, tmp_path / "sources.yaml", [*prompt_sources(tmp_path, ["plain"]), SYNTHETIC],
                        monkeypatch)
    assert added == ["plain", "magpie_new"]
    assert auto.tick(at(10, 5)) == chain_of("plain")  # no model runs by itself
    report(instance, CHAIN, ["plain"])
    assert auto.tick(at(11, 0, 30)) == {}  # dedup reads every source: it waits for magpie_new
    report(instance, ["magpie_instructions"], ["magpie_new"])  # the user's on-demand ingest_job run
    assert auto.tick(at(11, 5)) == {a: {"magpie_new"} for a in CHAIN[1:]}
    report(instance, CHAIN[1:], ["magpie_new"])
    assert auto.tick(at(11, 6)) == {a: {None} for a in DEDUP}



def test_a_registry_broken_after_the_sync_requests_nothing(tmp_path, instance, monkeypatch, caplog):
    """SourceNotSynthetic cannot tell a free source from a synthetic one: no generator partition, so
    nothing downstream either; the reason is logged."""
    auto = Automation(instance)
    index_built(auto, instance, at(10, 0, 30))
    add_sources(instance, tmp_path / "sources.yaml", prompt_sources(tmp_path, ["plain"]), monkeypatch)
    (tmp_path / "sources.yaml").write_text("sources: []\n")
    assert auto.tick(at(10, 5)) == {}
    assert "sources registry invalid, no magpie_instructions partition requested" in caplog.text

def test_the_automation_sensor_itself_requests_one_run_for_the_new_sources_chain(tmp_path, instance, monkeypatch):
    """The sensor's own evaluation (what the code location runs for the daemon, custom condition
    included): one run for the new source's chain, nothing before the source exists."""
    sensor = next(s for s in defs.get_repository_def().sensor_defs if s.name == "posttrain_automation_sensor")

    def evaluate(cursor):
        with dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                     cursor=cursor) as ctx:
            return sensor(ctx)

    first = evaluate(None)  # before any source: the missing benchmark index only
    assert [set(r.asset_selection) for r in first.run_requests] == [{dg.AssetKey(INDEX)}]
    report(instance, [INDEX])
    add_sources(instance, tmp_path / "sources.yaml", prompt_sources(tmp_path, ["fresh"]), monkeypatch)
    (run,) = evaluate(first.cursor).run_requests
    assert (set(run.asset_selection), run.partition_key) == ({dg.AssetKey(a) for a in CHAIN}, "fresh")



def sft_source(tmp_path, key: str, n: int) -> dict:
    path = tmp_path / f"{key}.jsonl"
    path.write_text("".join(f'{{"instruction": "Write fact number {i * 7} about the {key} river.", '
                            f'"output": "Fact {i}."}}\n' for i in range(n)))
    return {"key": key, "kind": "sft", "adapter": "generic", "fields": {"prompt": "instruction", "response": "output"},
            "loader": {"path": str(path)}, "licence": "MIT"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("POSTTRAIN_LONG_TESTS") != "1",
                    reason="~3.5 min of a real daemon waiting for per-minute cron ticks (the in-process tests above "
                           "cover every condition; tests/test_ui.py runs a backfill under the daemon): "
                           "POSTTRAIN_LONG_TESTS=1 make test runs it")
def test_dagster_dev_adding_a_source_is_all_a_user_does(tmp_path, monkeypatch):
    """The real daemons (`dagster dev`): a source materialised before it starts; after the automation
    sensor's first tick a second source is written into the registry and nothing else is done: the
    registry sensor adds it, the automation sensor runs its chain, one dedup (cron every minute
    here), both sources' survivors and records, then the export. No LLM stage runs."""
    home, storage, reg = tmp_path / "home", str(tmp_path / "storage"), tmp_path / "sources.yaml"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    seed, new = sft_source(tmp_path, "seed", 4), sft_source(tmp_path, "new", 3)
    env = {**os.environ, "DAGSTER_HOME": str(home), "POSTTRAIN_STORAGE": storage,
           "POSTTRAIN_SOURCES": str(reg), "POSTTRAIN_DEDUP_CRON": "* * * * *"}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        add_sources(instance, reg, [seed], monkeypatch)
        assert dg.materialize(defs.assets, selection=list(CHAIN), partition_key="seed", instance=instance,
                              resources=resources_for(storage, reg)).success
        with dagster_dev(tmp_path, env) as dev:
            # the automation sensor's first tick has ended once the daemon starts its second (a tick that
            # requests nothing logs no end line)
            for _ in range(2):
                dev.expect_line(r"Checking for new runs for sensor: posttrain_automation_sensor", 300)
            write_registry(reg, [seed, new])  # all the user does
            dev.expect_line(r" - hf_parquet - ASSET_MATERIALIZATION - ", 900)
            export = instance.get_latest_materialization_event(dg.AssetKey("hf_parquet"))
        md = {k: v.value for k, v in export.asset_materialization.metadata.items()}
        assert (md["rows_sft"], md["rows_cot"], md["rows_preference"]) == (7, 0, 0)
        mats = {a: sorted(r.partition_key or "-" for r in instance.fetch_materializations(dg.AssetKey(a), limit=50).records)
                for a in ("merged_prompts", "dedup_clusters", "deduplicated_prompts", "sft_records", "hf_parquet")}
        assert mats == {"merged_prompts": ["new", "seed"], "dedup_clusters": ["-"],  # one dedup
                        "deduplicated_prompts": ["new", "seed"], "sft_records": ["new", "seed"], "hf_parquet": ["-"]}
        for asset in ("difficulty_scores", "quality_tags", "evolved_instructions", "attribute_model"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is None  # on demand
