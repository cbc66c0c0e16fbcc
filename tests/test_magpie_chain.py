"""A Magpie source end to end (real LLMResource / RewardResource / embeddings defaults, tiny sizes):
instructions -> responses (magpie_instructions) -> tags (quality_tags) -> the filter
(filtered_instructions) -> pairs (preference_pairs); every step's accounting balances, every row
keeps its lineage to the generated instruction, a failed tag is null and counted, and a re-run of the
whole chain makes no model call.

Which instructions the 135M model writes (and which of them survive Magpie's reject rules) depends on
the CPU's kernels, so the instructions and their responses come from a scripted model behind the
`openai` backend (a loopback server, tests/llm_servers.py: the same 6 instructions on any machine);
the tags, the pairs' candidates and the reward judge run on the embedded model."""

import json

import dagster as dg
import pyarrow.parquet as pq

from posttrain_assets.common.language import detect_language
from posttrain_assets.magpie.assets import magpie_instructions
from posttrain_assets.selection.assets import filtered_instructions
from posttrain_assets.selection.tag_filter import QUALITY_LEVELS
from posttrain_assets.synthesis.assets import preference_pairs
from posttrain_assets.tagging.assets import quality_tags
from resources.llm import LLMResource, ModelSpec

from .helpers import mat_metadata, resources_for, step_error, upstream_specs, write_registry
from .llm_servers import ChatHandler, serve

KEY = "magpie_chain"
ENTRY = {"key": KEY, "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
         "generator_config": {"family": "smollm2", "total_prompts": 6, "n": 6, "ins_max_tokens": 48,
                              "res_max_tokens": 48, "seed": 1, "model": "magpie_gen"}}
#: what the scripted Magpie model writes: sample s of a call (request seed = call seed + s) -> one of
#: these; one ends with a colon (the filter's colon rule removes it), one is Japanese
INSTRUCTIONS = ["What is the capital of France?", "Write a haiku about autumn rain.",
                "How many legs does a spider have?", "Explain why the sky looks blue during the day.",
                "List three primary colours:", "日本で一番高い山は何ですか？"]


class ScriptedMagpie(ChatHandler):
    """/completions (the pre-query template): an instruction chosen by the request's seed;
    /chat/completions (the response to an instruction): a fixed short answer."""

    def respond(self, body: dict) -> None:
        if self.path.endswith("/completions") and "prompt" in body:
            self.reply(200, json.dumps({"choices": [{"text": INSTRUCTIONS[body["seed"] % len(INSTRUCTIONS)],
                                                     "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 9, "completion_tokens": 9}}).encode())
        else:
            self.answer("A short, direct answer to the question.", 20, 9)


CHAIN = [magpie_instructions, quality_tags, filtered_instructions, preference_pairs]
RUN_CONFIG = {"ops": {
    "quality_tags": {"config": {"max_tokens": 64}},
    # the 135M tagger's quality ratings rarely parse (null, counted): the quality rule is off here so
    # that rows reach the pairs; the colon and near-duplicate rules stay on
    "filtered_instructions": {"config": {"qualities": []}},
    "preference_pairs": {"config": {"max_prompts": 2, "samples_per_setting": 1, "max_tokens": 48,
                                    "max_reward_failure_rate": 1.0}}}}
#: the enum of each model-written tag (a value outside it would be a default in disguise)
ENUMS = {"input_quality": set(QUALITY_LEVELS), "difficulty": {"very easy", "easy", "medium", "hard", "very hard"},
         "safety": {"safe", "unsafe"}}


def _run(tmp_path, instance, url):
    reg = write_registry(tmp_path / "reg.yaml", [ENTRY])
    if KEY not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [KEY])
    resources = resources_for(str(tmp_path / "storage"), reg)
    resources["llm"] = LLMResource(cache_dir=str(tmp_path / "cache"), models={
        "magpie_gen": ModelSpec(backend="openai", model="scripted-magpie", base_url=url)})
    others = upstream_specs("evolved_instructions", "sft_records", "deduplicated_prompts", "selected_seeds",
                            "hard_problems")
    return dg.materialize(others + CHAIN, selection=CHAIN, partition_key=KEY, instance=instance,
                          resources=resources, run_config=RUN_CONFIG, raise_on_error=False)


def _table(tmp_path, asset):
    return pq.read_table(tmp_path / "storage" / asset / f"source={KEY}" / "data.parquet")


def test_a_magpie_source_from_instructions_to_pairs(tmp_path, instance):
    with serve(ScriptedMagpie) as url:
        _chain(tmp_path, instance, url)


def _chain(tmp_path, instance, url):
    result = _run(tmp_path, instance, url)
    assert result.success, step_error(result)
    md = {a: mat_metadata(result, a) for a in ("magpie_instructions", "quality_tags", "filtered_instructions",
                                                "preference_pairs")}
    for asset, m in md.items():
        assert m["rows_in"] == m["rows_out"] + m["removed"] + m["rejected"], asset
    assert all(e.passed for e in result.get_asset_check_evaluations())

    magpie, tags, kept, pairs = (_table(tmp_path, a) for a in md)
    # each step reads exactly what the step before wrote
    assert md["magpie_instructions"]["rows_in"] == 6 and md["quality_tags"]["rows_in"] == magpie.num_rows == 6
    assert sorted(magpie["instruction"].to_pylist()) == sorted(INSTRUCTIONS)
    assert md["filtered_instructions"]["rows_in"] == tags.num_rows
    assert md["preference_pairs"]["funnel_json"]["prompts_in"] == kept.num_rows
    # lineage: tags keep the magpie uuid; the filter keeps a subset; every pair names a kept row
    assert tags["id"].to_pylist() == magpie["uuid"].to_pylist()
    assert tags["instruction"].to_pylist() == magpie["instruction"].to_pylist()
    assert set(kept["id"].to_pylist()) <= set(tags["id"].to_pylist())
    assert set(pairs["all_prompt_id"].to_pylist()) <= set(kept["id"].to_pylist())
    # the filter: with the quality rule off, only the colon and near-duplicate rules can remove a row
    assert set(md["filtered_instructions"]["removed_by_reason"]) <= {"ends_with_colon", "near_duplicate"}
    ends = sum(1 for t in tags["instruction"].to_pylist() if t.rstrip().endswith((":", "：")))
    assert md["filtered_instructions"]["removed_by_reason"].get("ends_with_colon", 0) == ends == 1
    # six unrelated instructions: none is a near duplicate of another
    assert md["filtered_instructions"]["removed_by_reason"] == {"ends_with_colon": 1} and kept.num_rows == 5

    # tags: a value from the enum, or null with the failure named in the row and counted in the metadata
    failures = md["quality_tags"]["tag_failures"]
    for tag, enum in ENUMS.items():
        values = tags[tag].to_pylist()
        failed = [json.loads(f or "{}").get(tag) is not None for f in tags["tag_failures"].to_pylist()]
        assert all((v is None) == f for v, f in zip(values, failed)), tag
        assert {v for v in values if v is not None} <= enum, tag
        assert sum(failures[tag].values()) == sum(failed), tag
    assert tags["language"].to_pylist() == [detect_language(t) for t in tags["instruction"].to_pylist()]
    # gen_dis over the generated instructions: no near-identical row -> no first similar row; else it is
    # the row itself or an earlier one
    ids = tags["id"].to_pylist()
    for i, (first, repeats) in enumerate(zip(tags["min_similar_id"].to_pylist(), tags["repeat_count"].to_pylist())):
        assert (first is None) == (repeats == 0) and (first is None or first in ids[: i + 1])

    # the pairs: best over worst of their scored candidates, a positive margin
    for r in pairs.to_pylist():
        scores = [c["score"] for c in json.loads(r["candidate_scores"]) if c["score"] is not None]
        assert (r["chosen_score"], r["rejected_score"]) == (max(scores), min(scores)) and r["margin"] > 0

    # the whole chain again: every model answer from the cache, the same tables
    again = _run(tmp_path, instance, url)
    assert again.success, step_error(again)
    for asset in md:
        m = mat_metadata(again, asset)
        assert m.get("llm_calls", 0) == 0 and m.get("reward_llm_calls", 0) == 0, asset
    assert _table(tmp_path, "quality_tags").equals(tags) and _table(tmp_path, "preference_pairs").equals(pairs)
