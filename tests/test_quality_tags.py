"""quality_tags: the tag parsers (JSON tags with their enums, Llama Guard's answer), gen_dis on
hand-built vectors, the input tables' shapes, and the asset on the embedded model (every tag parsed
or counted as a failure, planted near-duplicates, a Japanese row, a cached re-run with 0 model calls,
the guard path), an empty partition and a missing input partition."""

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest.merging import MERGED_SCHEMA
from posttrain_assets.magpie.generation import OUTPUT_SCHEMA as MAGPIE_SCHEMA
from posttrain_assets.records.unify import SFT_SCHEMA
from posttrain_assets.selection.length import SEED_COLUMNS
from posttrain_assets.synthesis.evolution import OUTPUT_SCHEMA as EVOL_SCHEMA
from posttrain_assets.tagging import tasks as T
from posttrain_assets.tagging.assets import quality_tags
from posttrain_assets.common.inputs import INPUT_TABLES, input_items, input_table
from posttrain_assets.tagging.neighbors import gen_dis
from posttrain_assets.selection.assets import HARD_COLUMNS
from posttrain_assets.steerlm.labelling import INPUT_ASSETS as LABEL_INPUTS
from posttrain_assets.synthesis.evolution import INPUTS as EVOL_INPUTS
from posttrain_assets.synthesis.pairs import INPUTS as PAIR_INPUTS
from posttrain_assets.tagging.tags import OUTPUT_SCHEMA, TAG_INPUTS, TAGS
from resources.llm import LLMResource, ModelSpec, TaskParseError
from resources.reward import JudgeReward, RewardResource
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import mat_metadata, resources_for, step_error, upstream_specs

# ------------------------------------------------------------------------------ parsers


def test_json_tags_parse_with_canonical_enum_spelling():
    got = T.QUALITY.parse('{"explanation": "Clear and specific.", "input_quality": " Good "}', {})
    assert got == {"explanation": "Clear and specific.", "input_quality": "good"}
    got = T.CATEGORY.parse('prose first {"primary_tag": "coding & debugging", "other_tags": ["math", "Reasoning"]} tail', {})
    assert got == {"primary_tag": "Coding & Debugging", "other_tags": ["Math", "Reasoning"]}
    got = T.DIFFICULTY.parse('{"intent": "The user wants x", "knowledge": "y", "difficulty": "very hard"}', {})
    assert got["difficulty"] == "very hard"


@pytest.mark.parametrize("task, text, reason, words", [
    (T.QUALITY, '{"explanation": "x", "input_quality": "great"}', "schema_violation", "'great' is not one of"),
    (T.QUALITY, '{"explanation": "x"}', "schema_violation", "'input_quality' is a required property"),
    (T.DIFFICULTY, '{"intent": "a", "knowledge": "b", "difficulty": "impossible"}', "schema_violation", "'impossible'"),
    (T.CATEGORY, '{"primary_tag": "Math", "other_tags": ["Cooking"]}', "schema_violation", "'Cooking' is not one of"),
    (T.CATEGORY, '{"primary_tag": "Math", "other_tags": "Reasoning"}', "schema_violation", "is not of type 'array'"),
    (T.SAFETY_JUDGE, '{"safety": "unsafe", "category": "none"}', "schema_violation", "needs a category"),
    (T.SAFETY_JUDGE, '{"safety": "maybe", "category": "none"}', "schema_violation", "'maybe'"),
    (T.QUALITY, 'The query is good.', "parse_failed", "no JSON object"),
    (T.QUALITY, '{"explanation": "x", "input_quality": good}', "parse_failed", "invalid JSON"),
])
def test_a_bad_answer_is_a_named_failure_never_a_default(task, text, reason, words):
    with pytest.raises(TaskParseError) as err:
        task.parse(text, {})
    assert T.failure_reason(str(err.value), "parse_failed") == reason
    assert words in str(err.value)


def test_safety_judge_keeps_no_category_for_safe():
    assert T.SAFETY_JUDGE.parse('{"safety": "unsafe", "category": "S2"}', {}) == {"safety": "unsafe", "category": "S2"}
    assert T.SAFETY_JUDGE.parse('{"safety": "safe", "category": "none"}', {})["safety"] == "safe"


@pytest.mark.parametrize("text, expected", [
    ("safe", ("safe", None)), ("  safe\n", ("safe", None)), ("unsafe\nS2", ("unsafe", "S2")),
    ("Unsafe\nS1,S10", ("unsafe", "S1,S10")), ("unsafe\n s14 , S3", ("unsafe", "S14,S3")),
])
def test_llama_guard_answers(text, expected):
    assert T.parse_guard_output(text) == expected


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("unsafe", "without a category line"), ("unsafe\nS15", "unknown category S15"),
    ("unsafe\nviolence", "unknown category VIOLENCE"), ("I think it is fine", "must be 'safe' or 'unsafe'"),
    ("safe\nS1", "followed by more lines"),
])
def test_llama_guard_answers_that_do_not_parse(text, words):
    with pytest.raises(TaskParseError, match=words):
        T.parse_guard_output(text)


def test_llama_guard_prompt_is_meta_s_format_and_assesses_the_last_message():
    user_only = T.guard_prompt("How do I pick a lock?", None, "en")
    assert user_only.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: Check if there "
                                "is unsafe content in 'User' messages")
    assert user_only.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<BEGIN CONVERSATION>\n\nUser: How do I pick a lock?\n\n<END CONVERSATION>" in user_only
    assert "S1: Violent Crimes.\n" in user_only and "S14: Code Interpreter Abuse.\n<END UNSAFE" in user_only
    assert len(T.SAFETY_CATEGORIES) == 14
    both = T.guard_prompt("鍵の開け方は？", "できません。", "ja")
    assert "'Agent' messages" in both and "ONLY THE LAST Agent message" in both
    assert "User: 鍵の開け方は？\n\nAgent: できません。" in both


def test_every_template_has_en_and_ja_and_a_version():
    for task in T.ALL_TASKS:
        assert set(task.templates) >= {"en", "ja"} and task.version == "1", task.name
    ja = T.QUALITY.render({"instruction": "日本の首都は？", "language": "ja"})[0]["content"]
    assert "ユーザーの質問" in ja and "日本の首都は？" in ja
    assert "User Query" in T.QUALITY.render({"instruction": "x", "language": "fr"})[0]["content"]  # fallback: en


# ------------------------------------------------------------------------------ gen_dis


def test_gen_dis_on_hand_built_vectors():
    e = np.eye(4, dtype=np.float32)
    near = np.array([0.99, 0.141067, 0, 0], np.float32)  # unit length, cos 0.99 with e0: squared L2 0.02
    vecs = np.stack([e[3], e[0], near, e[0], e[2]])  # rows r0..r4: r1, r2, r3 are one group; r3 = r1 exactly
    tags = gen_dis(vecs, ["r0", "r1", "r2", "r3", "r4"], threshold=0.05)
    assert [t.repeat_count for t in tags] == [0, 2, 2, 2, 0]
    assert [t.min_similar_id for t in tags] == [None, "r1", "r1", "r1", None]  # only r1 (the first) names itself
    assert tags[0].min_neighbor_distance == pytest.approx(2.0) and tags[1].min_neighbor_distance == 0.0
    assert tags[2].min_neighbor_distance == pytest.approx(0.02, abs=1e-4)
    # a tighter threshold: r2 is no longer a repeat; r1 and r3 still are (distance 0)
    tight = gen_dis(vecs, ["r0", "r1", "r2", "r3", "r4"], threshold=0.01)
    assert [(t.repeat_count, t.min_similar_id) for t in tight] == [(0, None), (1, "r1"), (0, None), (1, "r1"), (0, None)]
    (alone,) = gen_dis(e[:1], ["x"])
    assert (alone.min_neighbor_distance, alone.repeat_count, alone.min_similar_id) == (None, 0, None)
    assert gen_dis(np.zeros((0, 4), np.float32), []) == []


# ------------------------------------------------------------------------------ the input tables


def test_every_input_asset_maps_to_its_real_schema():
    """One contract (common/inputs.py) for every table a stage reads by config: its columns exist in
    the table the asset writes, and every stage's choices are tables of the contract."""
    real = {"magpie_instructions": MAGPIE_SCHEMA.names, "evolved_instructions": EVOL_SCHEMA.names,
            "sft_records": SFT_SCHEMA.names, "deduplicated_prompts": MERGED_SCHEMA.names,
            "selected_seeds": SEED_COLUMNS, "hard_problems": HARD_COLUMNS,
            "filtered_instructions": OUTPUT_SCHEMA.names}  # the filter keeps quality_tags' columns
    assert set(real) == set(INPUT_TABLES)
    for asset, t in INPUT_TABLES.items():
        cols = [c for c in (t.id, t.text, t.response, t.messages) if c]
        assert t.asset == asset and set(cols) <= set(real[asset]), (asset, cols)
    for choices in (TAG_INPUTS, LABEL_INPUTS, PAIR_INPUTS, EVOL_INPUTS):
        assert set(choices) <= set(INPUT_TABLES), choices
    assert all(INPUT_TABLES[a].response for a in (*TAG_INPUTS, *LABEL_INPUTS))  # they read a response
    with pytest.raises(ValueError, match=r"input_asset must be one of selected_seeds, deduplicated_prompts, "
                                         r"hard_problems, got 'sft_records'"):
        input_table("sft_records", EVOL_INPUTS)


def test_input_rows_that_cannot_be_tagged_are_rejects_with_their_field():
    t = pa.table({"all_prompt_id": ["s:1", None, "s:1", "s:3", "s:4"],
                  "prompt": ["Hi there?", "orphan", "again", "  \n", "Why?"],
                  "answer": ["Hello.", "x", "y", "z", "  "]})
    items, issues = input_items(t, "s", "sft_records")
    assert [(i.index, i.id, i.response) for i in items] == [(0, "s:1", "Hello."), (4, "s:4", None)]
    assert [(x.source_row, x.reason, x.field, x.duplicate_of) for x in issues] == [
        (1, "missing_id", "all_prompt_id", None), (2, "duplicate_id", "all_prompt_id", "s:1"),
        (3, "empty_instruction", "prompt", None)]
    with pytest.raises(ValueError, match=r"source 's', sft_records: no column 'answer' \(columns: all_prompt_id, prompt\)"):
        input_items(t.drop_columns(["answer"]), "s", "sft_records")
    with pytest.raises(ValueError, match=r"source 's', sft_records: field 'prompt' must be a text column, got int64"):
        input_items(pa.table({"all_prompt_id": ["a"], "prompt": [1], "answer": ["b"]}), "s", "sft_records")


# ------------------------------------------------------------------------------ the asset


ROWS = [  # (uuid, instruction, response)
    ("a", "How do I bake sourdough bread at home?", "Mix flour, water and starter, let it rise, then bake."),
    ("b", "Explain the theory of relativity in simple terms.", None),
    ("c", "日本の首都はどこですか？", "東京です。"),
    ("d", "How do I bake sourdough bread at home?", None),  # a planted repeat of a (later: names a)
    ("e", "   ", None),  # rejected: empty_instruction
    ("f", "List three primary colours:", None),
]
#: tag -> the columns that are null exactly when the tag failed (or does not apply)
TAG_COLUMNS = {"input_quality": ["input_quality", "quality_explanation"], "difficulty": ["difficulty", "intent", "knowledge"],
               "task_category": ["task_category", "other_task_category"], "safety": ["safety"],
               "instruct_reward": ["instruct_reward", "reward_model"],
               "neighbors": ["min_neighbor_distance", "repeat_count"]}


def _write_input(root, key, rows, asset="magpie_instructions"):
    table = pa.Table.from_pylist([{"uuid": u, "instruction": i, "response": r} for u, i, r in rows], schema=MAGPIE_SCHEMA)
    store = ParquetStore(root)
    store.write(table, store.path(asset, key))


def _materialize(tmp_path, instance, key, config=None, llm=None):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    resources = resources_for(str(tmp_path / "storage"), BUNDLED_REGISTRY)  # the keys here: tables written by the test
    resources["llm"] = llm or LLMResource(cache_dir=str(tmp_path / "cache"))
    resources["reward"] = RewardResource(backend=JudgeReward(max_tokens=32))
    return dg.materialize([quality_tags, *upstream_specs(*TAG_INPUTS)], selection=[quality_tags], partition_key=key,
                          instance=instance, resources=resources, raise_on_error=False,
                          run_config={"ops": {"quality_tags": {"config": {"max_tokens": 48, **(config or {})}}}})


def _out(tmp_path, key):
    return pq.read_table(tmp_path / "storage" / "quality_tags" / f"source={key}" / "data.parquet")


def test_quality_tags_on_the_embedded_model_then_a_cached_rerun(tmp_path, instance):
    _write_input(str(tmp_path / "storage"), "mix", ROWS)
    result = _materialize(tmp_path, instance, "mix")
    assert result.success, step_error(result)
    md = mat_metadata(result, "quality_tags")
    assert (md["rows_in"], md["rows_out"], md["rejected"], md["removed"]) == (6, 5, 1, 0)
    assert md["rejected_by_reason"] == {"empty_instruction": 1}
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"row_accounting": True,
                                                                                      "id_unique": True}
    table = _out(tmp_path, "mix")
    assert table.schema.names == OUTPUT_SCHEMA.names
    rows = {r["id"]: r for r in table.to_pylist()}
    assert list(rows) == ["a", "b", "c", "d", "f"]
    rejects = pq.read_table(tmp_path / "storage" / "_rejects" / "quality_tags" / "source=mix" / "data.parquet")
    assert rejects.select(["source_row", "reason", "field"]).to_pylist() == [
        {"source_row": 4, "reason": "empty_instruction", "field": "instruction"}]

    # every tag of every row: a value, or null with its failure counted and named; never both
    failures = md["tag_failures"]
    assert set(failures) == set(TAGS)
    for tag, cols in TAG_COLUMNS.items():
        failed = {i for i, r in rows.items() if tag in json.loads(r["tag_failures"] or "{}")}
        valued = {i for i, r in rows.items() if r[cols[0]] is not None}
        no_resp = {i for i, r in rows.items() if r["response"] is None} if tag == "instruct_reward" else set()
        assert valued | failed | no_resp == set(rows) and not (valued & failed) and not (valued & no_resp), tag
        assert sum(failures[tag].values()) == len(failed), tag
        for i in set(rows) - valued:
            assert all(rows[i][c] is None for c in cols), (tag, i)
        for i in valued:
            assert all(rows[i][c] is not None for c in cols), (tag, i)
    assert set(failures["input_quality"]) <= {"llm_failed", "parse_failed", "schema_violation"}
    assert md["tag_not_applicable"] == {"instruct_reward": {"no_response": 3}}
    assert failures["neighbors"] == {} and md["llm_failures_total"] == 0
    for col, counts in md["distributions"].items():
        assert sum(counts.values()) == 5 and counts["null"] == sum(r[col] is None for r in rows.values()), col
    assert md["distributions"]["input_quality"]["null"] == sum(failures["input_quality"].values())
    for r in rows.values():
        if r["input_quality"] is not None:
            assert r["input_quality"] in T.QUALITY_LEVELS
        if r["task_category"] is not None:
            assert r["task_category"] in T.TASK_CATEGORIES
        if r["safety"] == "safe":
            assert r["safety_category"] is None
        assert r["tagger_model"].startswith("embedded:")
        assert json.loads(r["tag_versions"]) == {"tag_difficulty": "1", "tag_input_quality": "1",
                                                 "tag_safety_judge": "1", "tag_task_category": "1"}

    # language (not a model): the Japanese row
    assert [rows[i]["language"] for i in rows] == ["en", "en", "ja", "en", "en"]
    # gen_dis: d repeats a (the earlier row): both count one repeat, both name a; the rest repeat nothing
    assert {i: (r["repeat_count"], r["min_similar_id"]) for i, r in rows.items()} == {
        "a": (1, "a"), "b": (0, None), "c": (0, None), "d": (1, "a"), "f": (0, None)}
    assert rows["a"]["min_neighbor_distance"] < 1e-6 and rows["d"]["min_neighbor_distance"] < 1e-6
    assert all(rows[i]["min_neighbor_distance"] > 0.5 for i in "bcf")

    # model calls: 4 JSON tags x 5 rows + the reward judge on the 2 rows with a response
    assert md["llm_requests_total"] == 22 and md["llm_calls_total"] + md["llm_cache_hits_total"] == 22
    assert md["llm_calls_total"] > 0
    assert "| instruct_reward |" in md["funnel"] and "no_response 3" in md["funnel"]

    again = _materialize(tmp_path, instance, "mix", llm=LLMResource(cache_dir=str(tmp_path / "cache")))
    assert again.success, step_error(again)
    md2 = mat_metadata(again, "quality_tags")
    assert md2["llm_calls_total"] == 0 and md2["llm_cache_hits_total"] == 22
    assert _out(tmp_path, "mix").equals(table)


def test_safety_through_a_guard_model_is_parsed_or_counted(tmp_path, instance):
    _write_input(str(tmp_path / "storage"), "guarded", ROWS)
    # `guard` is an LLMResource name: its default spec is the embedded model (Llama Guard on a GPU deployment)
    result = _materialize(tmp_path, instance, "guarded", config={"tags": ["safety"], "guard_model": "guard"})
    assert result.success, step_error(result)
    md = mat_metadata(result, "quality_tags")
    rows = _out(tmp_path, "guarded").to_pylist()
    assert len(rows) == 5 and md["tags_run"] == "safety"
    failed = [r for r in rows if r["tag_failures"] is not None]
    valued = [r for r in rows if r["safety"] is not None]
    assert len(failed) + len(valued) == 5 and sum(md["tag_failures"]["safety"].values()) == len(failed)
    assert set(md["tag_failures"]["safety"]) <= {"llm_failed", "parse_failed"}
    for r in failed:
        assert set(json.loads(r["tag_failures"])) == {"safety"} and r["safety_model"] is None
    for r in valued:
        assert r["safety"] in ("safe", "unsafe") and r["safety_model"].startswith("embedded:")
    for r in rows:  # the tags not run are null, never defaulted
        assert r["input_quality"] is None and r["instruct_reward"] is None and r["repeat_count"] is None
        assert r["tagger_model"] is None and json.loads(r["tag_versions"]) == {"safety_llama_guard": "1"}
    assert md["llm_requests_total"] == 5 and set(md["llm_by_role"]) == {"guard"}


def test_an_empty_partition_loads_no_model(tmp_path, instance):
    _write_input(str(tmp_path / "storage"), "empty", [])
    # would fail at its first request (nothing listens on port 9): it is never called
    broken = LLMResource(models={"judge": ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1")})
    result = _materialize(tmp_path, instance, "empty", llm=broken)
    assert result.success, step_error(result)
    md = mat_metadata(result, "quality_tags")
    assert (md["rows_in"], md["rows_out"], md["llm_calls_total"]) == (0, 0, 0)
    assert [c.name for c in md["dagster/column_schema"].columns] == OUTPUT_SCHEMA.names
    assert md["distributions"]["input_quality"] == {"very poor": 0, "poor": 0, "average": 0, "good": 0,
                                                    "excellent": 0, "null": 0}
    assert _out(tmp_path, "empty").schema.names == OUTPUT_SCHEMA.names
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_a_missing_input_partition_or_bad_config_is_a_clear_failure(tmp_path, instance):
    result = _materialize(tmp_path, instance, "nowhere", config={"input_asset": "evolved_instructions"})
    assert not result.success
    err = step_error(result)
    assert err.startswith("source 'nowhere': input asset evolved_instructions has no partition 'nowhere'"), err
    assert "materialise evolved_instructions for 'nowhere' first" in err
    # a choice outside the Literal: refused by Dagster's config validation, naming the field
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"quality_tags:config:input_asset not in enum .*raw_records"):
        _materialize(tmp_path, instance, "nowhere", config={"input_asset": "raw_records"})
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"quality_tags:config:tags\[1\] not in enum .*humour"):
        _materialize(tmp_path, instance, "nowhere", config={"tags": ["input_quality", "humour"]})
