"""Adapters on real rows: exact counts and parsed fields (bundled slices; full files when present)."""

import json
from collections import Counter

import pytest

from partitions.registry import parse_registry
from posttrain_assets.ingest.adapters import parse_hh_transcript, render_conversation, split_gsm8k_answer
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts

from .conftest import SHARED_DATA, needs_shared


def merged(spec):
    loaded = load_rows(spec)
    return loaded, merge_prompts(rows_to_table(loaded), spec)


def rows_by_id(result):
    return {r["source_prompt_id"]: r for r in result.table.to_pylist()}


def test_gsm8k(bundled):
    loaded, res = merged(bundled.get("gsm8k"))
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (300, 300, 0)
    first = rows_by_id(res)["train_300:0"]
    assert first["all_prompt_id"] == "gsm8k:train_300:0"
    assert first["prompt"].startswith("Natalia sold clips to 48 of her friends in April")
    assert first["reference_answer"] == "72"
    assert first["response"].endswith("#### 72")
    assert first["messages"] == [{"role": "user", "content": first["prompt"]}]
    assert json.loads(first["metadata"]) == {"question": first["prompt"], "answer": first["response"]}
    # every bundled row has a final answer; thousands separators are dropped
    assert res.table["reference_answer"].null_count == 0
    assert split_gsm8k_answer("so 1,200 in all\n#### 1,200") == ("so 1,200 in all", "1200")
    assert split_gsm8k_answer("no marker") == ("no marker", None)


def test_hh_rlhf(bundled):
    loaded, res = merged(bundled.get("hh_rlhf_harmless_base"))
    assert (loaded.rows_read, res.table.num_rows) == (300, 299)
    assert res.accounting.rejected_by_reason == {"empty_response": 1}
    (issue,) = res.issues
    assert (issue.source_row, issue.field, issue.reason) == (86, "chosen", "empty_response")
    row0 = rows_by_id(res)["test_300:0"]
    assert row0["messages"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in row0["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert row0["messages"][2]["content"] == "yep"
    assert row0["messages"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert row0["prompt"].startswith("User: what are some pranks with a pen i can do?\n\nAssistant: ")
    assert row0["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert row0["chosen"] != row0["rejected"]
    assert res.table["chosen"].null_count == 0 and res.table["response"].null_count == 299


def test_hh_transcript_parse():
    turns = parse_hh_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:")
    assert turns == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "bye"}, {"role": "assistant", "content": ""}]
    with pytest.raises(ValueError, match="text before"):
        parse_hh_transcript("preamble\n\nHuman: hi")
    assert render_conversation(turns[:1]) == "hi"


def test_awesome_csv(bundled):
    loaded, res = merged(bundled.get("awesome_chatgpt_prompts"))
    assert (loaded.rows_read, len(loaded.rows), res.table.num_rows) == (211, 210, 210)
    (issue,) = loaded.issues
    assert (issue.reason, issue.source_row) == ("csv_extra_columns", 209)
    assert "Virtual Event Planner" in issue.raw
    first = res.table.slice(0, 1).to_pylist()[0]
    assert json.loads(first["metadata"])["act"] == "An Ethereum Developer"
    assert first["response"] is None and first["kind"] == "prompt"


def test_self_instruct(bundled):
    loaded, res = merged(bundled.get("self_instruct"))
    assert (loaded.rows_read, res.table.num_rows) == (175, 175)
    rows = rows_by_id(res)
    assert rows["seed_task_0#0"]["prompt"].startswith("Is there anything I can eat for a breakfast")
    assert rows["seed_task_0#0"]["response"].startswith("Yes, you can have 1 oatmeal banana protein shake")
    # an instance with input: prompt = instruction + blank line + input
    with_input = [r for r in rows.values() if json.loads(r["metadata"])["instance"]["input"]]
    assert len(with_input) == sum(1 for r in loaded.rows if r["instances"][0]["input"])
    r = with_input[0]
    meta = json.loads(r["metadata"])
    assert r["prompt"] == meta["instruction"].strip() + "\n\n" + meta["instance"]["input"].strip()


def test_oasst_en_tree(bundled):
    loaded, res = merged(bundled.get("oasst_en"))
    assert (loaded.rows_read, res.accounting.rows_in, res.table.num_rows) == (40, 337, 337)
    rows = rows_by_id(res)
    r = rows["fa783ef0-4f4e-457d-b429-afd89edf8757"]
    assert r["prompt"] == "How can I find the best 401k plan for my needs?"
    assert r["rank"] == 0 and r["response"].startswith("The first step is to research your options.")
    assert rows["03334b2a-f315-4a0d-b9ff-ac94e017e266"]["rank"] == 1
    # deeper prompter turns carry the conversation from the root
    deep = [x for x in rows.values() if len(x["messages"]) >= 3]
    assert deep and all(x["messages"][0]["role"] == "user" and x["messages"][1]["role"] == "assistant"
                        for x in deep)
    assert all(x["prompt"].startswith("User: ") for x in deep)


def test_oasst2_labels_and_repeated_tree(bundled):
    loaded, res = merged(bundled.get("oasst2_labelled"))
    assert (loaded.rows_read, res.accounting.rows_in, res.table.num_rows) == (60, 130, 129)
    (dup,) = res.issues
    assert (dup.reason, dup.outcome, dup.source_row) == ("exact_duplicate", "removed", 38)
    assert dup.duplicate_of == "oasst2_labelled:3877d7d8-04f7-4589-9611-ccd77bc0c5d2"
    labelled = [r for r in res.table.to_pylist() if r["labels"]]
    assert labelled, "replies carry human labels"
    labels = json.loads(labelled[0]["labels"])
    assert set(labels["quality"]) == {"value", "count"}


# ------------------------------------------------------------------ full files in ../shared/data


def _spec(**kw):
    base = {"licence": "x"}
    return parse_registry({"sources": [{**base, **kw}]}).sources[0]


@needs_shared
def test_full_gsm8k_train():
    loaded, res = merged(_spec(key="g", kind="cot", adapter="gsm8k",
                               loader={"path": str(SHARED_DATA / "gsm8k/train.jsonl")}))
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (7473, 7473, 0)
    assert res.table["reference_answer"].null_count == 0


@needs_shared
def test_full_hh_rlhf():
    loaded, res = merged(_spec(key="h", kind="preference", adapter="hh_rlhf",
                               loader={"path": str(SHARED_DATA / "hh_rlhf_harmless_base/test.jsonl.gz")}))
    assert loaded.rows_read == 2312 and res.table.num_rows == 2303
    assert res.accounting.rejected_by_reason == {"empty_response": 4, "transcripts_diverge": 5}
    assert sorted(i.source_row for i in res.issues if i.reason == "transcripts_diverge")[:2] == [1254, 1688]


@needs_shared
@pytest.mark.parametrize("file, root", [("en_100_tree.jsonl", "prompt"), ("en_100_message.jsonl", ".")])
def test_full_oasst_en(file, root):
    loaded, res = merged(_spec(key="o", kind="sft", adapter="oasst_tree", fields={"root": root},
                               loader={"path": str(SHARED_DATA / "oasst_en_100" / file)}))
    # 480 prompter messages: 687 assistant replies + 226 prompter leaves = 913 records
    assert (loaded.rows_read, res.accounting.rows_in, res.table.num_rows) == (100, 913, 913)
    assert res.table.filter(res.table["response"].is_null()).num_rows == 226


@needs_shared
def test_full_oasst2_openpaws():
    loaded, res = merged(_spec(key="o2", kind="attributes", adapter="oasst_tree",
                               loader={"path": str(SHARED_DATA / "oasst2_openpaws_filtered/oasst2_filtered.jsonl")}))
    acc = res.accounting
    assert (loaded.rows_read, acc.rows_in, acc.rows_out) == (551, 1277, 1184)
    assert acc.removed_by_reason == {"exact_duplicate": 45}
    assert acc.rejected_by_reason == {"deleted_message": 48}
    assert acc.balanced
    langs = Counter(json.loads(r)["prompt_message"]["lang"] for r in res.table["metadata"].to_pylist())
    assert langs["en"] > langs["es"] > 0
