"""filtered_instructions: Magpie's filter over a hand-built quality_tags table — each reason with exact
counts (first failing rule, in the documented order), the share each rule removes on its own,
missing tags under active rules, the optional bounds, and the asset (rejects, accounting, an empty
partition, a bad config)."""

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.selection.assets import filtered_instructions
from posttrain_assets.selection.tag_filter import RULES, FilterRules, apply_filter, instruction_length
from posttrain_assets.tagging.tags import OUTPUT_SCHEMA
from resources.storage import ParquetStore

from .helpers import mat_metadata, resources_for, step_error, upstream_specs, write_registry


def _row(i, instruction="Explain photosynthesis step by step.", quality="good", reward=4.0, sim=None, repeats=0,
         difficulty="medium", safety="safe", language="en"):
    return {"id": i, "source": "s", "input_asset": "magpie_instructions", "instruction": instruction,
            "response": "An answer.", "language": language, "input_quality": quality,
            "quality_explanation": None if quality is None else "because", "difficulty": difficulty,
            "intent": None if difficulty is None else "i", "knowledge": None if difficulty is None else "k",
            "task_category": "Information seeking", "other_task_category": [], "safety": safety,
            "safety_category": None, "instruct_reward": reward, "reward_model": None if reward is None else "judge:x",
            "min_neighbor_distance": None if repeats is None else 0.5, "repeat_count": repeats, "min_similar_id": sim,
            "tag_failures": None, "tagger_model": "embedded:x", "safety_model": "embedded:x", "tag_versions": "{}"}


#: one row per situation; the comment says which rule drops it first under the default rules
TAGS = pa.Table.from_pylist([
    _row("keep1"),                                                        # kept
    _row("keep2", quality="excellent", sim="keep2", repeats=1),           # kept: the first of its group
    _row("poor", quality="poor", instruction="Fix this:"),                # low_input_quality (also ends with ':')
    _row("noq", quality=None),                                            # input_quality_missing
    _row("colon", instruction="List three primary colours:"),             # ends_with_colon
    _row("fwcolon", instruction="次の文を英語に訳してください：", language="ja"),  # ends_with_colon (full width)
    _row("dup", sim="keep2", repeats=1),                                  # near_duplicate (names keep2)
    _row("nodis", sim=None, repeats=None),                                # neighbors_missing
    _row("lowrew", reward=1.5, difficulty="very easy"),                   # kept by default (reward rule off)
    _row("norew", reward=None, safety="unsafe", difficulty=None),         # kept by default
    _row("ja", instruction="日本の首都はどこですか？詳しく説明してください。", language="ja", difficulty="hard"),  # kept
], schema=OUTPUT_SCHEMA)


def test_default_rules_count_every_drop_by_its_first_failing_rule():
    res = apply_filter(TAGS, FilterRules())
    assert res.active == ["input_quality", "colon", "near_duplicate"]
    assert res.kept["id"].to_pylist() == ["keep1", "keep2", "lowrew", "norew", "ja"]
    assert dict(res.removed_by_reason) == {"low_input_quality": 1, "input_quality_missing": 1, "ends_with_colon": 2,
                                           "near_duplicate": 1, "neighbors_missing": 1}
    assert [(TAGS["id"][i].as_py(), rule) for i, rule, _ in res.dropped] == [
        ("poor", "input_quality"), ("noq", "input_quality"), ("colon", "colon"), ("fwcolon", "colon"),
        ("dup", "near_duplicate"), ("nodis", "near_duplicate")]
    # on its own, the colon rule also removes "poor" ("Fix this:"): 3 rows of 11
    assert res.per_rule == {
        "input_quality": {"removes": 2, "missing": 1, "share": round(2 / 11, 4),
                          "by_reason": {"input_quality_missing": 1, "low_input_quality": 1}},
        "colon": {"removes": 3, "missing": 0, "share": round(3 / 11, 4), "by_reason": {"ends_with_colon": 3}},
        "near_duplicate": {"removes": 2, "missing": 1, "share": round(2 / 11, 4),
                           "by_reason": {"near_duplicate": 1, "neighbors_missing": 1}}}


def test_optional_rules_reward_length_difficulty_safety():
    rules = FilterRules(qualities=(), no_trailing_colon=False, drop_near_duplicates=False, min_reward=3.0,
                        min_length=5, max_length=20, min_difficulty="easy", max_difficulty="medium", safe_only=True)
    res = apply_filter(TAGS, rules)
    assert res.active == ["instruct_reward", "length", "difficulty", "safety"]
    # "Fix this:" / "List three primary colours:" are 2 / 4 words (too_short); the full-width one is 15
    # characters of Japanese (kept); "ja" (24 characters) is too_long; lowrew / norew fail the reward first
    assert dict(res.removed_by_reason) == {"low_instruct_reward": 1, "instruct_reward_missing": 1, "too_short": 2,
                                           "too_long": 1}
    assert res.kept["id"].to_pylist() == ["keep1", "keep2", "noq", "fwcolon", "dup", "nodis"]
    assert res.per_rule["difficulty"]["by_reason"] == {"too_easy": 1, "too_hard": 1, "difficulty_missing": 1}
    assert res.per_rule["safety"]["by_reason"] == {"unsafe": 1}
    assert res.per_rule["instruct_reward"]["missing"] == 1
    only_hard = apply_filter(TAGS, FilterRules(qualities=(), no_trailing_colon=False, drop_near_duplicates=False,
                                               min_difficulty="hard"))
    assert only_hard.kept["id"].to_pylist() == ["ja"]
    assert dict(only_hard.removed_by_reason) == {"too_easy": 9, "difficulty_missing": 1}


def test_lengths_and_rule_checks():
    assert instruction_length("日本の 首都は？", "ja") == 7 and instruction_length("How are you today?", "en") == 4
    assert instruction_length("我 爱 你", "zh") == 3
    with pytest.raises(ValueError, match="min_difficulty: must be one of very easy"):
        apply_filter(TAGS, FilterRules(min_difficulty="trivial"))
    with pytest.raises(ValueError, match="qualities: unknown level"):
        apply_filter(TAGS, FilterRules(qualities=("great",)))
    with pytest.raises(ValueError, match="min_length 9 is above max_length 3"):
        apply_filter(TAGS, FilterRules(min_length=9, max_length=3))
    with pytest.raises(ValueError, match=r"no column 'min_similar_id', 'repeat_count' needed by the active rules"):
        apply_filter(TAGS.drop_columns(["min_similar_id", "repeat_count"]), FilterRules())
    assert RULES == ("input_quality", "instruct_reward", "colon", "near_duplicate", "length", "difficulty", "safety")


def _materialize(tmp_path, instance, key, table, config=None):
    store = ParquetStore(str(tmp_path / "storage"))
    store.write(table, store.path("quality_tags", key))
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    return dg.materialize([filtered_instructions, *upstream_specs("quality_tags")], selection=[filtered_instructions],
                          partition_key=key, instance=instance, raise_on_error=False,
                          resources=resources_for(str(tmp_path / "storage"), write_registry(tmp_path / "r.yaml", [])),
                          run_config={"ops": {"filtered_instructions": {"config": config or {}}}})


def test_the_asset_writes_kept_rows_rejects_and_per_rule_shares(tmp_path, instance):
    result = _materialize(tmp_path, instance, "s", TAGS)
    assert result.success, step_error(result)
    md = mat_metadata(result, "filtered_instructions")
    assert (md["rows_in"], md["rows_out"], md["removed"], md["rejected"]) == (11, 5, 6, 0)
    assert md["removed_by_reason"] == {"low_input_quality": 1, "input_quality_missing": 1, "ends_with_colon": 2,
                                       "near_duplicate": 1, "neighbors_missing": 1}
    assert md["per_rule"]["colon"]["removes"] == 3 and md["rules_active"] == "input_quality, colon, near_duplicate"
    assert "| 2 | colon | 3 | 27.3% | 0 | 2 |" in md["per_rule_table"]
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"row_accounting": True}
    out = pq.read_table(tmp_path / "storage" / "filtered_instructions" / "source=s" / "data.parquet")
    assert out.schema.names == OUTPUT_SCHEMA.names and out["id"].to_pylist() == ["keep1", "keep2", "lowrew", "norew", "ja"]
    rejects = pq.read_table(tmp_path / "storage" / "_rejects" / "filtered_instructions" / "source=s" / "data.parquet")
    assert rejects.select(["source_row", "reason", "field", "outcome"]).to_pylist()[4:] == [
        {"source_row": 6, "reason": "near_duplicate", "field": "min_similar_id", "outcome": "removed"},
        {"source_row": 7, "reason": "neighbors_missing", "field": "min_similar_id", "outcome": "removed"}]
    assert rejects["detail"][0].as_py() == "id 'poor': rule input_quality"

    strict = _materialize(tmp_path, instance, "s", TAGS, config={"min_reward": 3.0})
    assert mat_metadata(strict, "filtered_instructions")["removed_by_reason"]["low_instruct_reward"] == 1


def test_an_empty_tags_partition_and_a_bad_config(tmp_path, instance):
    result = _materialize(tmp_path, instance, "e", OUTPUT_SCHEMA.empty_table())
    assert result.success, step_error(result)
    md = mat_metadata(result, "filtered_instructions")
    assert (md["rows_in"], md["rows_out"]) == (0, 0) and md["per_rule"]["colon"] == {
        "removes": 0, "missing": 0, "share": 0.0, "by_reason": {}}
    # a level outside the list: refused before the run starts, naming the field (a typed choice)
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_difficulty.*not in enum.*extreme"):
        _materialize(tmp_path, instance, "e", OUTPUT_SCHEMA.empty_table(), config={"max_difficulty": "extreme"})
    # two valid levels in the wrong order: the filter's own check, a step failure that says why
    bad = _materialize(tmp_path, instance, "e", OUTPUT_SCHEMA.empty_table(),
                       config={"min_difficulty": "very hard", "max_difficulty": "very easy"})
    assert not bad.success and step_error(bad) == ("source 'e', quality_tags: min_difficulty 'very hard' is above "
                                                   "max_difficulty 'very easy'")


def test_a_failed_data_write_keeps_the_old_rejects_beside_the_old_data(tmp_path, instance, monkeypatch):
    """The rejects were written before the data: a failed data write left new rejects beside old data
    (issue 21). Now they are staged and moved into place only once the data is committed."""
    root = tmp_path / "storage"
    data = root / "filtered_instructions" / "source=s" / "data.parquet"
    rejects = root / "_rejects" / "filtered_instructions" / "source=s" / "data.parquet"
    assert _materialize(tmp_path, instance, "s", TAGS).success
    before = (data.read_bytes(), rejects.read_bytes())

    real_write = ParquetStore.write

    def failing(self, table, path):  # the disk fills up as the data is written, not before
        if path == str(data):
            raise OSError(28, "No space left on device")
        return real_write(self, table, path)

    monkeypatch.setattr(ParquetStore, "write", failing)
    assert not _materialize(tmp_path, instance, "s", TAGS, config={"min_reward": 3.0}).success
    assert (data.read_bytes(), rejects.read_bytes()) == before  # both old: consistent
    monkeypatch.setattr(ParquetStore, "write", real_write)
    assert _materialize(tmp_path, instance, "s", TAGS, config={"min_reward": 3.0}).success
    assert "low_instruct_reward" in pq.read_table(rejects)["reason"].to_pylist()
    assert not (rejects.parent / "data.parquet.pending").exists()
