"""A model stage leaves out the sources whose registry `model_stages` do not list it (by default
the `attributes` sources, which only take labelling): no model loads, the table is empty and every
row it loaded is counted removed as `not_in_model_stages`; a source that lists the stage is worked on."""

import dagster as dg
import pytest

from .helpers import SAMPLE, mat_metadata, materialize_source, resources_for, upstream_specs, write_registry
from posttrain_assets.records.assets import cot_records, sft_records
from posttrain_assets.scoring.assets import difficulty_scores
from posttrain_assets.selection.assets import selected_seeds
from posttrain_assets.synthesis.assets import evolved_instructions, generated_solutions, preference_pairs
from posttrain_assets.tagging.assets import quality_tags
from resources.storage import StorageResource

HS2 = {"kind": "attributes", "adapter": "helpsteer", "licence": "CC-BY-4.0",
       "loader": {"path": str(SAMPLE / "helpsteer2" / "helpsteer2_train_head100.jsonl"), "limit": 12}}
SOURCES = [{"key": "hs2", **HS2},  # kind default: steerlm only
           {"key": "gsm8k_off", "kind": "cot", "adapter": "gsm8k", "licence": "MIT", "model_stages": ["steerlm"],
            "loader": {"path": str(SAMPLE / "gsm8k" / "train_300.jsonl"), "limit": 9}},
           {"key": "hs2_scored", **HS2, "model_stages": ["scoring", "steerlm"]}]
#: inputs with rows for every stage (their defaults read tables that are empty for these sources)
RUN_CONFIG = {"ops": {"evolved_instructions": {"config": {"input_asset": "deduplicated_prompts"}},
                      "generated_solutions": {"config": {"input": "records"}},
                      "quality_tags": {"config": {"input_asset": "sft_records"}},
                      "preference_pairs": {"config": {"input_asset": "deduplicated_prompts"}}}}
STAGE_ASSETS = (difficulty_scores, selected_seeds, evolved_instructions, generated_solutions, quality_tags,
                preference_pairs)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    root, reg = str(tmp / "storage"), write_registry(tmp / "sources.yaml", SOURCES)
    store = StorageResource(root=root).store()
    out = {}
    with dg.DagsterInstance.ephemeral() as inst:
        for s in SOURCES:
            key = s["key"]
            materialize_source(key, inst, root, reg)
            # global dedup is out of scope here: every merged prompt survives
            store.write(store.read(store.path("merged_prompts", key)), store.path("deduplicated_prompts", key))
            dg.materialize([sft_records, cot_records, *upstream_specs("deduplicated_prompts")], partition_key=key,
                           instance=inst, resources=resources_for(root, reg), selection=["sft_records", "cot_records"])
            scored_only = key == "hs2_scored"
            assets = (difficulty_scores,) if scored_only else STAGE_ASSETS
            res = dg.materialize([*assets, *upstream_specs("deduplicated_prompts", "sft_records", "cot_records")],
                                 partition_key=key, instance=inst, resources=resources_for(root, reg),
                                 selection=[k for a in assets for k in a.keys],
                                 run_config={"ops": {"difficulty_scores": {"config": {"max_items": 3}}}}
                                 if scored_only else RUN_CONFIG)
            out[key] = {a: mat_metadata(res, a) for a in ("difficulty_scores", "evolved_instructions",
                                                          "generated_solutions", "quality_tags", "preference_pairs")
                        if any(ev.asset_key.to_user_string() == a for ev in res.get_asset_materialization_events())}
            out[key]["checks"] = {(c.asset_key.to_user_string(), c.check_name): c.passed
                                  for c in res.get_asset_check_evaluations()}
            out[key]["inputs"] = {a: store.read(store.path(a, key)).num_rows
                                  for a in ("deduplicated_prompts", "sft_records", "cot_records")}
    return out


@pytest.mark.parametrize("key", ["hs2", "gsm8k_off"])
def test_a_stage_the_registry_leaves_out_counts_every_row_removed(stages, key):
    got, n = stages[key], stages[key]["inputs"]
    rows_in = {"difficulty_scores": n["sft_records"] + n["cot_records"], "evolved_instructions": n["deduplicated_prompts"],
               "generated_solutions": 0,  # solutions requested: none
               "quality_tags": n["sft_records"], "preference_pairs": n["deduplicated_prompts"]}
    assert {"hs2": (12, 12, 0), "gsm8k_off": (9, 0, 9)}[key] == (
        n["deduplicated_prompts"], n["sft_records"], n["cot_records"])
    for asset, expected_in in rows_in.items():
        md = got[asset]
        assert (md["rows_in"], md["rows_out"], md["rejected"]) == (expected_in, 0, 0), asset
        assert dict(md["removed_by_reason"]) == ({"not_in_model_stages": expected_in} if expected_in else {}), asset
        assert md.get("llm_calls", 0) == 0 and md.get("llm_requests", 0) == 0, asset  # no model asked
    assert set(stages[key]["checks"].values()) == {True}
    # every problem with a gold answer gets a pass-rate row with n = 0 and the reason as its status
    assert got["generated_solutions"]["funnel_json"]["problems"] == 0


def test_a_source_that_lists_the_stage_is_worked_on(stages):
    md = stages["hs2_scored"]["difficulty_scores"]
    assert md["rows_out"] > 0 and md["llm_calls"] > 0
    assert "not_in_model_stages" not in dict(md["removed_by_reason"])
