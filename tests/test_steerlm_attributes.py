"""SteerLM attributes (issue 11, first part): NeMo's order, the OASST / HelpSteer / Japanese-quality
mappings on real rows, missing attributes never filled, the label string round trip, and both
training formats rendered exactly."""

import json

import pytest

from posttrain_assets.steerlm import attributes as A

from .conftest import SHARED_DATA, needs_shared
from .helpers import SAMPLE


def _first_tree():
    return json.loads((SAMPLE / "oasst2_labelled" / "oasst2_filtered_60.jsonl").read_text().splitlines()[0])


def test_order_is_nemos():
    assert A.ATTRIBUTES == ("quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence",
                            "complexity", "verbosity")


def test_oasst_labels_on_real_replies():
    prompt = _first_tree()["prompt"]
    first = prompt["replies"][0]
    # 0.667, 0.083, 0.083, 0.417 (3 votes each) -> round(x * 4); the moderation labels are not attributes
    assert A.oasst_labels(first["labels"]) == {"quality": 3, "toxicity": 0, "humor": 0, "creativity": 2}
    deeper = first["replies"][0]["replies"][0]
    assert A.oasst_labels(deeper["labels"]) == {"quality": 1, "toxicity": 0, "humor": 0, "creativity": 1}
    assert A.label_string(A.oasst_labels(first["labels"])) == "quality:3,toxicity:0,humor:0,creativity:2"


def test_nemo_rounding_and_bad_values():
    assert [A.oasst_scale(v) for v in (0.0, 0.125, 0.375, 0.625, 0.875, 1.0)] == [0, 0, 2, 2, 4, 4]
    for bad in (1.2, -0.1, "0.5", True, None):
        with pytest.raises(A.AttributeMappingError, match="in \\[0, 1\\]"):
            A.oasst_scale(bad, "labels.quality")


def test_a_missing_attribute_stays_missing():
    labels = A.oasst_labels({"quality": {"value": 0.5, "count": 2}, "humor": {"value": None, "count": 0}})
    assert labels == {"quality": 2}
    vector = A.label_vector(labels)
    assert vector == [2, None, None, None, None, None, None, None, None]
    assert A.training_target(vector) == [2] + [-100] * 8
    assert A.label_string(labels) == "quality:2"


@needs_shared
def test_helpsteer_rows():
    row = json.loads((SHARED_DATA / "helpsteer_sample" / "helpsteer_train_500.jsonl").read_text().splitlines()[0])
    labels = A.helpsteer_labels(row)
    assert labels == {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2}
    assert A.label_string(labels) == "helpfulness:3,correctness:4,coherence:4,complexity:2,verbosity:2"
    with pytest.raises(A.AttributeMappingError, match="verbosity: a HelpSteer score must be an integer 0-4, got 5"):
        A.helpsteer_labels({**row, "verbosity": 5})


@needs_shared
def test_japanese_quality_ratings():
    data = json.loads((SHARED_DATA / "oasst2_ja_edited" / "edited_data_flat.json").read_text())
    mapped = [A.ja_quality(m["quality"]) for m in data.values()]
    # 5 x 15, 4 x 7, 3 x 3 and 5 not rated (-1): 4 x 15, 3 x 7, 2 x 3, missing x 5
    counts = {}
    for m in mapped:
        key = m.get("quality", "missing")
        counts[key] = counts.get(key, 0) + 1
    assert counts == {4: 15, 3: 7, 2: 3, "missing": 5}
    with pytest.raises(A.AttributeMappingError, match="1-5 or -1, got 0"):
        A.ja_quality(0)


def test_label_string_round_trip_and_errors():
    labels = {"quality": 4, "toxicity": 0, "humor": 0, "creativity": 0, "helpfulness": 4, "correctness": 4,
              "coherence": 4, "complexity": 2, "verbosity": 2}
    text = A.label_string(labels)
    assert text == ("quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,"
                    "complexity:2,verbosity:2")
    assert A.parse_label_string(text) == labels
    assert A.label_string({"verbosity": 1, "quality": 3, "humor": None}) == "quality:3,verbosity:1"
    for bad, words in [("quality:5", "expected <attribute>:<0-4>"), ("charm:2", "expected <attribute>:<0-4>"),
                       ("humor:1,quality:2", "out of NeMo's order"), ("quality:1,quality:2", "appears twice")]:
        with pytest.raises(A.AttributeMappingError, match=words):
            A.parse_label_string(bad)
    with pytest.raises(A.AttributeMappingError, match="unknown attribute"):
        A.label_string({"charm": 2})


def test_clamp_round_is_attribute_annotate():
    assert [A.clamp_round(v) for v in (-0.7, 0.49, 2.5, 3.51, 9.0)] == [0, 0, 2, 4, 4]


def test_both_training_formats():
    conv = [{"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7.", "labels": {"quality": 4, "toxicity": 0, "helpfulness": 3}},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "11.", "labels": {"quality": 3}}]
    assert A.steerlm_text(conv, system="S") == (
        "<extra_id_0>System\nS\n<extra_id_1>User\nName a prime.\n<extra_id_1>Assistant\n"
        "<extra_id_2>quality:4,toxicity:0,helpfulness:3\n7.\n<extra_id_1>User\nAnother?\n<extra_id_1>Assistant\n"
        "<extra_id_2>quality:3\n11.")
    assert A.llmjp_text(conv) == (
        "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\nName a prime."
        "\nquality:4,toxicity:0,helpfulness:3\n\n### 応答:\n7.\n\n### 指示:\nAnother?\nquality:3\n\n### 応答:\n11.")
    with pytest.raises(A.AttributeMappingError, match="ends with the assistant's turn"):
        A.steerlm_text(conv[:1])
    with pytest.raises(A.AttributeMappingError, match="turn 1: expected alternating"):
        A.llmjp_text([conv[0], conv[2], conv[1]])
