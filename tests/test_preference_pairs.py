"""preference_pairs: the pair selection and the prompt-table normalisation on constructed rows (exact
expectations), the asset on the embedded model with the real LLMResource() and RewardResource()
defaults for generation (tiny: 3 prompts, 2 candidates each, 48 new tokens) and a scripted judge on
loopback for the ratings (what a 135M judge rates depends on the CPU's kernels; the scripted one
does not), and its export config `preference_synthetic` in TRL's conversational preference format."""

import json
import threading
from collections import Counter

import dagster as dg
import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from posttrain_assets.common.sizing import full_sizes
from posttrain_assets.export.assets import hf_parquet
from posttrain_assets.export.hf_dataset import PREFERENCE_SYNTHETIC_PROVENANCE, preference_synthetic_config
from posttrain_assets.magpie.generation import OUTPUT_SCHEMA as MAGPIE_SCHEMA
from posttrain_assets.records.unify import COT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA
from posttrain_assets.synthesis.assets import PairsConfig, preference_pairs
from posttrain_assets.synthesis.pairs import (INPUTS, PAIRS_SCHEMA, RESPONSE, Candidate, Setting, assemble,
                                              choose_pair, classify, conversation, funnel_markdown,
                                              generation_settings, margin_histogram, prompt_items,
                                              request_failures, reward_answer_failures)
from resources.llm import LLMResource, ModelSpec
from resources.reward.judge import ASPECTS
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, REPO
from .helpers import load_export, mat_metadata, no_contamination, resources_for, step_error, upstream_specs
from .llm_servers import ChatHandler, serve

HS3 = REPO / "tests" / "data" / "helpsteer3_format.jsonl"  # any loadable registry entry (the export reads no rows)
JA = "日本の首都はどこですか？一文で答えてください。"


# --------------------------------------------------------------------------- pure: the pair

def _cand(item: str, index: int, text, score=None, *, failure="", temperature=1.0, finish="stop") -> Candidate:
    c = Candidate(item, index, "generator", "embedded:m", temperature, index, text=text,
                  error="" if text is not None else "LLMError: boom", finish_reason=finish)
    c.score, c.reward_failure, c.sent_to_reward = score, failure, score is not None or bool(failure)
    c.reward_error = "no JSON object in the answer" if failure else ""
    c.reward_model = "judge:embedded:m"
    return c


def test_choose_pair_best_worst_ties_and_margin():
    cs = [_cand("p", i, f"answer {i}", s) for i, s in enumerate([3.0, 4.5, 1.25, 4.5, 1.25])]
    chosen, rejected, why = choose_pair(cs, 0.0)
    assert (why, chosen.index, rejected.index) == ("pair", 1, 2)  # the earliest of equal scores, both ends
    assert choose_pair(cs, 3.25) == (chosen, rejected, "pair")  # margin 3.25 >= 3.25
    assert choose_pair(cs, 3.5) == (None, None, "below_min_margin")
    assert choose_pair([_cand("p", 0, "a", 2.0), _cand("p", 1, "b", 2.0)], 0.0) == (None, None, "tie")
    # unscored candidates (reward failures) are not candidates for either end
    one = [_cand("p", 0, "a", 5.0), _cand("p", 1, "b", None, failure="parse_failed")]
    assert choose_pair(one, 0.0) == (None, None, "fewer_than_2_scored")
    assert choose_pair([], 0.0) == (None, None, "fewer_than_2_scored")


def test_classify_duplicates_empty_truncated():
    cs = [_cand("p", 0, "Paris."), _cand("p", 1, None), _cand("p", 2, "  "), _cand("p", 3, "Paris."),
          _cand("p", 4, "Lyon", finish="length"), _cand("p", 5, "Nice")]
    classify(cs)
    assert [c.status for c in cs] == ["unique", "llm_failed", "empty", "duplicate", "unique", "unique"]
    assert cs[3].duplicate_of == 0
    classify(cs, drop_truncated=True)
    assert [c.status for c in cs] == ["unique", "llm_failed", "empty", "duplicate", "truncated", "unique"]


def _item(pid: str, row: int, lang: str = "en") -> dict:
    text = f"question {pid}"
    return {"id": pid, "row": row, "source": "s", "prompt": text, "messages": [{"role": "user", "content": text}],
            "language": lang}


def test_assemble_every_outcome_counted_and_no_placeholder():
    items = [_item(p, i) for i, p in enumerate(["pair", "failed", "same", "reward", "tie", "close"])]
    cands = {
        "pair": [_cand("pair", 0, "good", 4.75, temperature=0.0), _cand("pair", 1, "bad", 1.5),
                 _cand("pair", 2, "ok", 3.0)],
        "failed": [_cand("failed", 0, "only one"), _cand("failed", 1, None), _cand("failed", 2, None)],
        "same": [_cand("same", 0, "x"), _cand("same", 1, "x"), _cand("same", 2, "")],
        "reward": [_cand("reward", 0, "a", 3.0), _cand("reward", 1, "b", None, failure="parse_failed"),
                   _cand("reward", 2, "c", None, failure="llm_failed")],
        "tie": [_cand("tie", 0, "a", 2.0), _cand("tie", 1, "b", 2.0)],
        "close": [_cand("close", 0, "a", 2.25), _cand("close", 1, "b", 2.0)],
    }
    for cs in cands.values():
        classify(cs)
    res = assemble(items, cands, min_margin=0.5, input_asset="magpie_instructions", metadata={"task": "t@1"})
    assert res.table.schema.equals(PAIRS_SCHEMA)
    (row,) = res.table.to_pylist()
    assert {k: row[k] for k in ("id", "all_prompt_id", "input_asset", "chosen", "rejected", "chosen_score",
                                "rejected_score", "margin", "chosen_temperature", "rejected_temperature",
                                "n_candidates", "n_scored", "reward_model", "chosen_model")} == {
        "id": "pair:pair", "all_prompt_id": "pair", "input_asset": "magpie_instructions", "chosen": "good",
        "rejected": "bad", "chosen_score": 4.75, "rejected_score": 1.5, "margin": 3.25, "chosen_temperature": 0.0,
        "rejected_temperature": 1.0, "n_candidates": 3, "n_scored": 3, "reward_model": "judge:embedded:m",
        "chosen_model": "embedded:m"}
    assert row["messages"] == [{"role": "user", "content": "question pair"}] and json.loads(row["metadata"]) == {"task": "t@1"}
    assert [c["score"] for c in json.loads(row["candidate_scores"])] == [4.75, 1.5, 3.0]
    by_reason = {i.detail.split(":")[0]: (i.reason, i.outcome, i.source_row) for i in res.issues}
    assert by_reason == {"failed": ("llm_failed", "rejected", 1), "same": ("too_few_candidates", "removed", 2),
                         "reward": ("reward_failed", "rejected", 3), "tie": ("tie", "removed", 4),
                         "close": ("below_min_margin", "removed", 5)}
    details = {i.reason: i.detail for i in res.issues}
    assert details["llm_failed"] == "failed: 1 usable of 3 candidates (llm_failed 2, unique 1); first error: LLMError: boom"
    assert details["too_few_candidates"] == "same: 1 usable of 3 candidates (empty 1, duplicate 1, unique 1)"
    assert details["reward_failed"].startswith("reward: 1 of 3 candidates scored (reward llm_failed 1, parse_failed 1)")
    assert details["below_min_margin"] == "close: best 2.25, worst 2 over 2 scored candidates (margin 0.25 < min_margin 0.5)"
    c = res.counts
    assert (c["prompts"], c["candidates_requested"], c["candidates_llm_failed"], c["candidates_empty"],
            c["candidates_duplicate"], c["candidates_unique"], c["reward_requested"], c["candidates_scored"],
            c["reward_failed_parse_failed"], c["reward_failed_llm_failed"], c["prompts_with_2_candidates"],
            c["prompts_with_2_scored"], c["tie"], c["below_min_margin"], c["pairs"]) == \
        (6, 16, 2, 1, 1, 12, 10, 8, 1, 1, 4, 3, 1, 1, 1)
    # failed requests: 2 generations + 1 reward request of 16 + 10; unusable reward answers: 1 of 10
    assert request_failures(c) == (3, 26) and reward_answer_failures(c) == (1, 10)
    assert margin_histogram(res.margins)[:4] == [{"margin": "0 (tie)", "prompts": 1, "pairs": 0},
                                                 {"margin": "(0, 0.25]", "prompts": 1, "pairs": 0},
                                                 {"margin": "(0.25, 0.5]", "prompts": 0, "pairs": 0},
                                                 {"margin": "(0.5, 1]", "prompts": 0, "pairs": 0}]
    assert margin_histogram(res.margins)[5] == {"margin": "(2, 4]", "prompts": 1, "pairs": 1}
    md = funnel_markdown(c, {"tie": 1, "llm_failed": 1})
    assert "| pairs | 1 |" in md and "| rejected | llm_failed | 1 |" in md and "| reward failed: parse_failed | 1 |" in md


def test_generation_settings():
    assert generation_settings(["generator"], [0.0, 1.0], 2) == [Setting("generator", 0.0, 1), Setting("generator", 1.0, 2)]
    assert generation_settings(["a", "b"], [0.0], 5) == [Setting("a", 0.0, 1), Setting("b", 0.0, 1)]
    for args, word in ((([], [1.0], 2), "models"), ((["a", "a"], [1.0], 2), "models"),
                       ((["a"], [], 2), "temperatures"), ((["a"], [-0.1], 2), "temperatures"),
                       ((["a"], [1.0], 0), "samples_per_setting"), ((["a"], [0.0], 3), "at least 2"),
                       ((["a"], [0.7], 1), "at least 2")):
        with pytest.raises(ValueError, match=word):
            generation_settings(*args)


# --------------------------------------------------------------------------- pure: the prompt tables

def test_every_input_schema_is_normalised():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."}]
    tables = {
        "filtered_instructions": pa.table({"id": ["u1"], "source": ["s"], "input_asset": ["magpie_instructions"],
                                           "instruction": ["Explain DNS."], "response": ["..."], "language": ["en"],
                                           "input_quality": ["good"], "task_category": ["Information seeking"]}),
        "magpie_instructions": pa.Table.from_pylist([{"uuid": "u1", "instruction": "Explain DNS.", "language": "en"}],
                                                    schema=MAGPIE_SCHEMA),
        "deduplicated_prompts": pa.table({"all_prompt_id": ["s:1"], "source": ["s"], "prompt": ["Hi"],
                                          "messages": [msgs], "language": ["en"]}),
        "selected_seeds": pa.table({"all_prompt_id": ["s:1"], "source": ["s"], "prompt": [JA], "answer": ["東京"],
                                    "solution": ["東京"]}),
        "hard_problems": pa.table({"all_prompt_id": ["s:1"], "source": ["s"], "language": ["en"], "prompt": ["2+2?"]}),
        "evolved_instructions": pa.table({"id": ["s:1:evol:r1"], "source": ["s"], "input": ["Explain DNS caching."],
                                          "output": ["..."], "language": ["en"]}),
    }
    assert sorted(tables) == sorted(INPUTS)
    got = {name: prompt_items(t, name, "s", 4000)[0][0] for name, t in tables.items()}
    assert {n: (g["id"], g["prompt"], g["language"], g["source"]) for n, g in got.items()} == {
        "filtered_instructions": ("u1", "Explain DNS.", "en", "s"),
        "magpie_instructions": ("u1", "Explain DNS.", "en", "s"),
        "deduplicated_prompts": ("s:1", "Name a colour.", "en", "s"),
        "selected_seeds": ("s:1", JA, "ja", "s"),  # no language column: detected
        "hard_problems": ("s:1", "2+2?", "en", "s"),
        "evolved_instructions": ("s:1:evol:r1", "Explain DNS caching.", "en", "s")}
    assert got["deduplicated_prompts"]["messages"] == msgs  # multi-turn kept
    # what the generator is sent: the task's system turn + the conversation (one user turn = render())
    assert conversation(got["magpie_instructions"]) == RESPONSE.render({"prompt": "Explain DNS.", "language": "en"})
    ja = conversation(got["selected_seeds"])
    assert ja[0]["role"] == "system" and "日本語" in ja[0]["content"] and ja[1] == {"role": "user", "content": JA}
    assert conversation(got["deduplicated_prompts"])[1:] == msgs


def test_bad_prompt_rows_are_counted_with_row_and_field():
    t = pa.table({"all_prompt_id": ["a", None, "a", "d", "e", "f"], "source": ["s"] * 6,
                  "prompt": ["ok", "no id", "again", "  ", "x" * 50, "fine"],
                  "messages": [None, None, None, None, None,
                               [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "done"}]]})
    items, issues = prompt_items(t, "deduplicated_prompts", "s", 40)
    assert [i["id"] for i in items] == ["a"]
    assert [(i.reason, i.outcome, i.source_row, i.field) for i in issues] == [
        ("missing_id", "rejected", 1, "all_prompt_id"), ("duplicate_id", "rejected", 2, "all_prompt_id"),
        ("empty_prompt", "removed", 3, "prompt"), ("prompt_too_long", "removed", 4, "prompt"),
        ("bad_messages", "rejected", 5, "messages")]
    assert issues[1].detail == "deduplicated_prompts row 2: all_prompt_id 'a' already on row 0"
    assert issues[4].detail == "f: the last turn is the assistant's, not the user's (nothing to answer)"
    with pytest.raises(ValueError, match=r"magpie_instructions has no column uuid \(columns: id, instruction\)"):
        prompt_items(pa.table({"id": ["1"], "instruction": ["x"]}), "magpie_instructions", "s", 4000)
    with pytest.raises(ValueError, match="input_asset must be one of"):
        prompt_items(t, "sft_records", "s", 4000)


# --------------------------------------------------------------------------- the asset (embedded model)

#: the candidates come from the embedded model; the ratings from ScriptedJudge below
PROMPTS = [("u-en-1", "Give me three tips for staying focused while studying.", "en"),
           ("u-en-2", "Name the largest planet in the solar system.", "en"),
           ("u-ja-1", JA, "ja")]
# the full-size defaults pinned (on the embedded engine they are the CPU sizes: common/sizing.py)
SMALL = {**full_sizes(PairsConfig), "input_asset": "magpie_instructions", "temperatures": [0.0, 1.0], "samples_per_setting": 1,
         "max_tokens": 48, "chunk": 4, "max_reward_failure_rate": 1.0}  # the 135M judge: see resources/reward/judge.py


def _magpie(root: str, key: str, prompts) -> None:
    rows = [{"uuid": u, "index": i, "instruction": text, "response": "a reply", "model": "embedded:m",
             "family": "smollm2", "language": lang, "settings_hash": "h", "version": 1, "finish_reason": "stop"}
            for i, (u, text, lang) in enumerate(prompts)]
    store = ParquetStore(root)
    store.write(pa.Table.from_pylist(rows, schema=MAGPIE_SCHEMA), store.path("magpie_instructions", key))


class ScriptedJudge(ChatHandler):
    """A judge on loopback (the `openai` backend, a real HTTP server) whose ratings do not depend on the
    CPU: the first answer it is sent for a prompt gets 5 on every aspect, every later one 1 (so two
    distinct candidates always make a pair); answers to the Japanese prompt get prose (unparseable:
    reward_failed, counted)."""

    seen: set = set()
    lock = threading.Lock()

    def respond(self, body: dict) -> None:
        content = body["messages"][-1]["content"]
        if JA in content:
            return self.answer("とても良い回答だと思います。")
        prompt = next(text for _, text, _ in PROMPTS if text in content)
        with ScriptedJudge.lock:
            rating = 1 if prompt in ScriptedJudge.seen else 5
            ScriptedJudge.seen.add(prompt)
        self.answer(json.dumps({**{a: rating for a in ASPECTS}, "reason": "scripted"}))


@pytest.fixture(scope="module")
def judge_url():
    with serve(ScriptedJudge) as url:
        yield url


def _run(instance, root, config, key="magpie", raise_on_error=True, judge_url=None):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    resources = resources_for(root, BUNDLED_REGISTRY)
    if judge_url:
        resources["llm"] = LLMResource(models={"judge": ModelSpec(backend="openai", model="scripted-judge",
                                                                  base_url=judge_url)})
    return dg.materialize(upstream_specs(*INPUTS) + [preference_pairs], selection=[preference_pairs],
                          partition_key=key, instance=instance, resources=resources,
                          run_config={"ops": {"preference_pairs": {"config": config}}}, raise_on_error=raise_on_error)


def _checks(result) -> dict:
    return {e.check_name: e.passed for e in (ev.event_specific_data for ev in result.all_events
                                             if ev.event_type_value == "ASSET_CHECK_EVALUATION")}


def test_pairs_on_the_embedded_model_accounting_cache_and_export(tmp_path, instance, judge_url):
    root = str(tmp_path / "storage")
    _magpie(root, "magpie", PROMPTS)
    first = _run(instance, root, SMALL, judge_url=judge_url)
    md = mat_metadata(first, "preference_pairs")
    table = pq.read_table(f"{root}/preference_pairs/source=magpie/data.parquet")
    rejects = pq.read_table(f"{root}/_rejects/preference_pairs/source=magpie/data.parquet")
    assert table.schema.equals(PAIRS_SCHEMA)

    # accounting: every prompt is a pair or a reject with its reason; the blocking checks pass
    assert md["rows_in"] == 3 and md["rows_out"] == table.num_rows
    assert md["rows_in"] == md["rows_out"] + md["removed"] + md["rejected"]
    assert dict(Counter(rejects["reason"].to_pylist())) == {**md["removed_by_reason"], **md["rejected_by_reason"]}
    assert sorted(table["all_prompt_id"].to_pylist() + [d.split(":")[0] for d in rejects["detail"].to_pylist()]) == \
        sorted(u for u, _, _ in PROMPTS)
    assert _checks(first) == {"row_accounting": True, "id_unique": True}

    # the funnel: 3 prompts x (1 greedy + 1 sampled) candidates; every unique one sent to the reward
    f = md["funnel_json"]
    assert (f["prompts_in"], f["prompts"], f["candidates_requested"]) == (3, 3, 6)
    assert f["candidates_requested"] == sum(f.get(f"candidates_{s}", 0) for s in ("llm_failed", "empty", "duplicate", "unique"))
    assert md["reward_pairs"] == f["reward_requested"] == md["reward_scored"] + md["reward_failed"]
    assert f.get("candidates_scored", 0) == md["reward_scored"]
    assert md["llm_calls"] == 6 and md["llm_cache_hits"] == 0 and md["llm_failures"] == 0
    assert md["reward_llm_calls"] == f["reward_requested"] and md["reward_model"] == "judge:openai:scripted-judge"
    assert f.get("pairs", 0) == table.num_rows and "margin_histogram" in md and "| pairs |" in md["funnel"]

    # each pair: best vs worst of its scored candidates, a real margin, its lineage
    for r in table.to_pylist():
        cands = json.loads(r["candidate_scores"])
        scores = [c["score"] for c in cands if c["score"] is not None]
        assert (r["chosen_score"], r["rejected_score"]) == (max(scores), min(scores))
        assert r["margin"] == r["chosen_score"] - r["rejected_score"] > 0 and r["chosen"] != r["rejected"]
        assert r["chosen"].strip() and r["rejected"].strip() and r["input_asset"] == "magpie_instructions"
        assert r["id"] == f"{r['all_prompt_id']}:pair" and r["source"] == "magpie"
        assert r["chosen_model"].startswith("embedded:") and sorted([r["chosen_temperature"], r["rejected_temperature"]]) == [0.0, 1.0]
        assert r["messages"] == [{"role": "user", "content": dict((u, t) for u, t, _ in PROMPTS)[r["all_prompt_id"]]}]
        assert r["language"] == {u: lang for u, _, lang in PROMPTS}[r["all_prompt_id"]]

    # a re-run: every generation and every rating from the cache, the same table
    second = _run(instance, root, SMALL, judge_url=judge_url)
    md2 = mat_metadata(second, "preference_pairs")
    assert (md2["llm_calls"], md2["llm_cache_hits"]) == (0, 6)
    assert (md2["reward_llm_calls"], md2["reward_llm_cache_hits"]) == (0, f["reward_requested"])
    assert pq.read_table(f"{root}/preference_pairs/source=magpie/data.parquet").equals(table)

    # unusable reward answers above max_reward_failure_rate fail the partition (the same answers, cached)
    # the Japanese prompt's candidates (1, or 2 when greedy and sampled differ) get prose from the judge
    assert md["reward_failed"] == f["reward_requested"] - md["reward_scored"] >= 1
    strict = _run(instance, root, {**SMALL, "max_reward_failure_rate": 0.0}, raise_on_error=False, judge_url=judge_url)
    assert not strict.success and step_error(strict) == (
        f"source 'magpie': {md['reward_failed']}/{md['reward_pairs']} reward answers failed "
        f"({md['reward_failed'] / md['reward_pairs']:.0%} > max_reward_failure_rate 0%); see the rejects of preference_pairs")

    # the export: config preference_synthetic in TRL's conversational preference format
    assert table.num_rows >= 1, "the tiny run gave no pair: the export check below would be vacuous"
    _export_inputs(root, ["magpie", "other"])
    reg = tmp_path / "s.yaml"
    reg.write_text(yaml.safe_dump({"sources": [{"key": k, "kind": "sft", "licence": "MIT", "adapter": "helpsteer3",
                                                "loader": {"path": str(HS3)}} for k in ("magpie", "other")]}))
    instance.add_dynamic_partitions("source", ["other"])
    run = dg.materialize(upstream_specs("sft_records", "cot_records", "preference_records", "evolved_instructions",
                                        "generated_solutions", "preference_pairs", "contamination") + [hf_parquet],
                         selection=[hf_parquet], instance=instance, resources=resources_for(root, reg))
    emd = mat_metadata(run, "hf_parquet")
    assert emd["rows_preference_synthetic"] == table.num_rows and emd["rows_preference"] == 0
    assert emd["synthetic_missing"]["preference_synthetic"] == ["other"]
    out = tmp_path / "storage" / "hf_export"
    files = sorted(str(p) for p in (out / "data" / "preference_synthetic").glob("train-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == table.num_rows
    assert ds.column_names == ["prompt", "chosen", "rejected", *PREFERENCE_SYNTHETIC_PROVENANCE]
    by_id = {r["id"]: r for r in table.to_pylist()}
    for ex in ds:
        src = by_id[ex["id"]]
        assert ex["prompt"] == src["messages"] and ex["prompt"][-1]["role"] == "user"
        assert ex["chosen"] == [{"role": "assistant", "content": src["chosen"]}]
        assert ex["rejected"] == [{"role": "assistant", "content": src["rejected"]}]
        assert (ex["margin"], ex["reward_model"], ex["input_asset"]) == (src["margin"], src["reward_model"], "magpie_instructions")
    assert load_export(str(out), "preference_synthetic", split="train").num_rows == table.num_rows
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == ["preference_synthetic"]


def _export_inputs(root: str, keys) -> None:
    store = ParquetStore(root)
    for key in keys:
        store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", key))
        store.write(COT_SCHEMA.empty_table(), store.path("cot_records", key))
        store.write(PREFERENCE_SCHEMA.empty_table(), store.path("preference_records", key))
    no_contamination(store, keys)


def test_empty_missing_and_bad_config(tmp_path, instance):
    root = str(tmp_path / "storage")
    _magpie(root, "empty", [])
    result = _run(instance, root, SMALL, key="empty")
    table = pq.read_table(f"{root}/preference_pairs/source=empty/data.parquet")
    assert table.num_rows == 0 and table.schema.equals(PAIRS_SCHEMA)
    md = mat_metadata(result, "preference_pairs")
    assert (md["rows_in"], md["rows_out"], md["removed"], md["rejected"]) == (0, 0, 0, 0)
    assert "llm_calls" not in md and "reward_pairs" not in md  # no model loaded
    assert _checks(result) == {"row_accounting": True, "id_unique": True}

    missing = _run(instance, root, {**SMALL, "input_asset": "filtered_instructions"}, key="empty", raise_on_error=False)
    assert not missing.success
    assert step_error(missing).startswith("source 'empty': ") and "filtered_instructions" in step_error(missing)
    assert "materialise filtered_instructions for 'empty' first" in step_error(missing)
    bad = _run(instance, root, {**SMALL, "temperatures": [0.0]}, key="empty", raise_on_error=False)
    assert not bad.success and "a pair needs at least 2" in step_error(bad)
    # a choice outside the Literal: refused by Dagster's config validation, naming the field
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"preference_pairs:config:input_asset not in enum .*sft_records"):
        _run(instance, root, {**SMALL, "input_asset": "sft_records"}, key="empty", raise_on_error=False)


def test_export_config_shape_from_constructed_pairs():
    items = [_item("a", 0), {**_item("b", 1), "messages": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "question b"}]}]
    cands = {i["id"]: [_cand(i["id"], 0, f"good {i['id']}", 5.0), _cand(i["id"], 1, f"bad {i['id']}", 1.0)]
             for i in items}
    for cs in cands.values():
        classify(cs)
    pairs = assemble(items, cands, min_margin=0.0, input_asset="selected_seeds").table
    out = preference_synthetic_config(pairs).to_pylist()
    assert out[1]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question b"}]
    assert [(r["chosen"], r["rejected"]) for r in out] == [
        ([{"role": "assistant", "content": "good a"}], [{"role": "assistant", "content": "bad a"}]),
        ([{"role": "assistant", "content": "good b"}], [{"role": "assistant", "content": "bad b"}])]
    empty = preference_synthetic_config(PAIRS_SCHEMA.empty_table())
    assert empty.num_rows == 0 and empty.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert pc.all(pc.equal(preference_synthetic_config(pairs)["margin"], 4.0)).as_py()


def test_failed_generation_requests_fail_the_partition_and_are_counted(tmp_path, instance):
    """A generator that cannot be reached (an OpenAI-compatible backend on a closed port): every request
    fails, so every prompt is an `llm_failed` reject and the partition fails (> llm.max_failure_rate)."""
    from resources.llm import LLMResource, ModelSpec

    from .helpers import free_port

    root = str(tmp_path / "storage")
    _magpie(root, "magpie", PROMPTS[:2])
    dead = LLMResource(models={"generator": ModelSpec(backend="openai", model="m",
                                                      base_url=f"http://127.0.0.1:{free_port()}/v1")},
                       max_retries=1, timeout_s=5)
    instance.add_dynamic_partitions("source", ["magpie"])
    run = dg.materialize(upstream_specs(*INPUTS) + [preference_pairs], selection=[preference_pairs],
                         partition_key="magpie", instance=instance,
                         resources={**resources_for(root, BUNDLED_REGISTRY), "llm": dead},
                         run_config={"ops": {"preference_pairs": {"config": SMALL}}}, raise_on_error=False)
    assert not run.success
    assert step_error(run) == ("source 'magpie': 4/4 requests failed (100% > llm max_failure_rate 20%); "
                               "see the rejects of preference_pairs")
    rejects = pq.read_table(f"{root}/_rejects/preference_pairs/source=magpie/data.parquet").to_pylist()
    assert [(r["reason"], r["outcome"], r["source_row"]) for r in rejects] == [("llm_failed", "rejected", 0),
                                                                             ("llm_failed", "rejected", 1)]
    assert all(r["detail"].split(": ", 1)[1].startswith("0 usable of 2 candidates (llm_failed 2); first error: ")
               for r in rejects)


def test_identical_candidates_are_deduplicated_before_the_reward(tmp_path, instance):
    """Two model names with the same (default) spec, greedy: the second name's answers are the first's
    (the same cache keys: cache hits) and identical, so each prompt has one unique candidate — counted
    duplicates, `too_few_candidates`, nothing sent to the reward."""
    root = str(tmp_path / "storage")
    _magpie(root, "magpie", PROMPTS[:2])
    result = _run(instance, root, {**SMALL, "models": ["generator", "judge"], "temperatures": [0.0]})
    md = mat_metadata(result, "preference_pairs")
    assert md["candidates_by_outcome"] == {"llm_failed": 0, "empty": 0, "truncated": 0, "duplicate": 2, "unique": 2}
    assert (md["llm_calls"], md["llm_cache_hits"]) == (2, 2) and "reward_pairs" not in md
    assert (md["rows_in"], md["rows_out"], md["removed_by_reason"], md["rejected"]) == (2, 0, {"too_few_candidates": 2}, 0)
    rejects = pq.read_table(f"{root}/_rejects/preference_pairs/source=magpie/data.parquet")
    assert rejects["detail"].to_pylist() == [f"{u}: 1 usable of 2 candidates (duplicate 1, unique 1)" for u, _, _ in PROMPTS[:2]]
