"""difficulty_scores through Dagster with the embedded model: cached re-runs make zero model calls; the
weighted difficulty_z on constructed numbers. (A run killed with SIGKILL: tests/test_reliability_llm.py.)"""

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.common.sizing import full_sizes
from posttrain_assets.scoring.assets import DifficultyConfig, difficulty_scores
from posttrain_assets.scoring.difficulty import (DEFAULT_WEIGHTS, SCORES_SCHEMA, check_weights, difficulty_z,
                                                 gold_items, label_pass_rate)
from posttrain_assets.records.unify import SFT_SCHEMA, cot_from
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import mat_metadata, resources_for, upstream_specs

# the full-size guards pinned (on the embedded engine the defaults are the CPU sizes: common/sizing.py)
RUN = {"ops": {"difficulty_scores": {"config": {**full_sizes(DifficultyConfig), "max_items": 4, "samples": 2,
                                                "max_new_tokens": 24, "chunk": 1}}}}


@pytest.fixture
def gsm_records(tmp_path, bundled):
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    spec = bundled.get("gsm8k")
    cot, _ = cot_from(merge_prompts(rows_to_table(load_rows(spec)), spec).table)
    store.write(cot, store.path("cot_records", "gsm8k"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "gsm8k"))
    return root


def score(instance, root, run_config=RUN):
    if "gsm8k" not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", ["gsm8k"])
    return dg.materialize(upstream_specs("cot_records", "sft_records") + [difficulty_scores],
                          selection=[difficulty_scores], partition_key="gsm8k", instance=instance,
                          resources=resources_for(root, BUNDLED_REGISTRY), run_config=run_config)


def test_second_materialisation_makes_no_model_calls(gsm_records, instance):
    first = mat_metadata(score(instance, gsm_records), "difficulty_scores")
    # per item: the gold's and the question's avg_logprob + 2 samples
    assert (first["rows_out"], first["llm_requests"], first["llm_calls"], first["llm_cache_hits"]) == (4, 16, 16, 0)
    assert first["llm_failures"] == 0 and first["llm_tokens_out"] > 0
    t1 = pq.read_table(f"{gsm_records}/difficulty_scores/source=gsm8k/data.parquet")
    second = mat_metadata(score(instance, gsm_records), "difficulty_scores")
    assert (second["llm_calls"], second["llm_cache_hits"]) == (0, 16)
    t2 = pq.read_table(f"{gsm_records}/difficulty_scores/source=gsm8k/data.parquet")
    assert t1.equals(t2)
    row = json.loads(t1["score_json"][0].as_py())
    assert set(row) == {"id", "prompt", "gold", "avg_logprob", "ensemble_acc", "irt_beta", "difficulty_z", "responses"}
    assert len(row["responses"]) == 2 and row["avg_logprob"] < 0
    assert t1.schema == SCORES_SCHEMA and first["difficulty_weights"] == DEFAULT_WEIGHTS
    cot = pq.read_table(f"{gsm_records}/cot_records/source=gsm8k/data.parquet").to_pylist()
    by_id = {r["all_prompt_id"]: r for r in cot}
    for r in t1.to_pylist():
        src = by_id[r["all_prompt_id"]]
        assert r["prompt_chars"] == len(src["prompt"])
        assert r["gold_chars"] == len(src["thinking"] + "\n#### " + src["answer"])  # the gsm8k continuation
        assert r["prompt_logprob"] < 0 and r["prompt_tokens"] > 0 and r["gold_tokens"] > 0
        assert r["label_pass_rate"] is None  # no pass_rate_field configured
    # difficulty_z is the stage's weighted combination of its own columns (the 135M model's
    # accuracy on 4 GSM8K items may be constant: then it is left out, as here)
    cols = {c: t1[c].to_numpy().astype(float) for c in ("avg_logprob", "ensemble_acc", "irt_beta", "gold_chars",
                                                        "prompt_chars", "prompt_logprob")}
    assert np.allclose(t1["difficulty_z"].to_numpy(), difficulty_z(**cols, weights=DEFAULT_WEIGHTS))


def test_difficulty_z_weights_constant_and_nan():
    """Exact expectations: each component z-scored (population sd), aligned (higher = harder;
    lengths on log(1 + chars)), weighted mean over the components an item has."""
    gold_chars = np.expm1(np.array([1.0, 2.0, 3.0]))  # log1p -> 1, 2, 3 -> z = -1.2247, 0, 1.2247
    avg = np.array([-1.0, -3.0, -2.0])  # aligned -avg: 1, 3, 2 -> z = -1.2247, 1.2247, 0
    k = np.sqrt(1.5)
    z_len, z_lp = np.array([-k, 0, k]), np.array([-k, k, 0])
    w = {"gold_chars": 3.0, "avg_logprob": 1.0}
    got = difficulty_z(avg, gold_chars=gold_chars, weights=w)
    assert np.allclose(got, (3 * z_len + z_lp) / 4)
    # a component without a weight, or with weight 0, is not used; neither is a constant one
    same = difficulty_z(avg, np.zeros(3), np.full(3, 0.7), gold_chars=gold_chars, prompt_logprob=np.array([-1, -2, -9.0]),
                        label_pass_rate=np.full(3, 0.5), weights={**w, "ensemble_acc": 5, "irt_beta": 5,
                                                                  "label_pass_rate": 9})
    assert np.allclose(same, got)
    # pass rate: higher = easier; prompt_logprob: lower = harder
    assert np.allclose(difficulty_z(label_pass_rate=np.array([1.0, 0.5, 0.0]), weights={"label_pass_rate": 1}),
                       [-k, 0, k])
    assert np.allclose(difficulty_z(prompt_logprob=np.array([-0.5, -1.5, -1.0]), weights={"prompt_logprob": 2}),
                       [-k, k, 0])
    # NaN: left out of that item's mean (the other weights renormalised), of the z-score's mean/sd
    pr = np.array([np.nan, 1.0, 0.0])  # aligned -pr = [nan, -1, 0]: mean -0.5, sd 0.5 -> z = [nan, -1, 1]
    got = difficulty_z(avg, label_pass_rate=pr, weights={"avg_logprob": 1, "label_pass_rate": 1})
    assert np.allclose(got, [z_lp[0], (z_lp[1] - 1) / 2, (z_lp[2] + 1) / 2])
    # an item with no finite value -> NaN; nothing usable at all -> zeros
    got = difficulty_z(np.array([np.nan, -1.0, -2.0]), weights={"avg_logprob": 1})
    assert np.isnan(got[0]) and np.allclose(got[1:], [-1, 1])
    assert np.array_equal(difficulty_z(np.full(3, -1.0), np.zeros(3), np.zeros(3), weights=DEFAULT_WEIGHTS), np.zeros(3))
    # weights=None: the plain mean of the given components (the first version's definition)
    assert np.allclose(difficulty_z(avg, gold_chars=gold_chars), (z_len + z_lp) / 2)
    with pytest.raises(ValueError, match="unknown component"):
        check_weights({"gold_length": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        check_weights({"gold_chars": -1.0})
    assert DifficultyConfig().weights == DEFAULT_WEIGHTS


def test_label_pass_rate_and_gold_items():
    assert label_pass_rate(json.dumps({"score": [True, False, True, None]}), "score") == 2 / 3
    assert label_pass_rate(json.dumps({"rate": 0.25}), "rate") == 0.25
    assert label_pass_rate(json.dumps({"rate": 7}), "rate") is None  # not a rate
    # OpenMathReasoning writes its pass rates as text
    assert [label_pass_rate(json.dumps({"p": v}), "p") for v in ("0.03125", "n/a", "abc", "1.5")] == [0.03125, None,
                                                                                                     None, None]
    assert label_pass_rate(json.dumps({"score": []}), "score") is None
    assert label_pass_rate(json.dumps({"x": 1}), "score") is None and label_pass_rate("not json", "score") is None
    assert label_pass_rate(json.dumps({"score": [True]}), "") is None  # no field configured
    cot = pa.table({"all_prompt_id": ["m:0", "m:1"], "source": ["m", "m"], "prompt": ["1+1?", "2+2?"],
                    "thinking": ["so \\boxed{2}", "so 4"], "answer": ["2", ""], "split_rule": ["boxed", "unsplit"],
                    "metadata": [json.dumps({"score": [True, False]}), "{}"]})
    sft = pa.table({"all_prompt_id": ["s:0"], "source": ["s"], "prompt": ["Capital of Peru?"], "answer": ["Lima"],
                    "metadata": [json.dumps({"score": [False, False]})]})
    items, issues = gold_items(cot, sft, pass_rate_field="score")
    assert [(i["id"], i["pass_rate"]) for i in items] == [("m:0", 0.5), ("s:0", 0.0)]
    assert [i.reason for i in issues] == ["no_gold_answer"]
    assert [i["pass_rate"] for i in gold_items(cot, sft)[0]] == [None, None]
