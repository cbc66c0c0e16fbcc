"""The formats people have: Alpaca, ShareGPT, OpenAI messages (with a KTO label) and MT-Bench-style
`turns` lists, on real rows (bundled slices; full files when present), plus every bad-row case."""

import copy
import json
from pathlib import Path

import pytest

from partitions.registry import RegistryError, load_registry, parse_registry
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts

from .conftest import REPO, SHARED_DATA, needs_shared

FORMATS_REGISTRY = Path(__file__).parent / "data" / "formats_registry.yaml"
SAMPLE = REPO / "posttrain_assets" / "sample_data"


@pytest.fixture(scope="module")
def formats():
    return load_registry(FORMATS_REGISTRY)


def merged(spec):
    loaded = load_rows(spec)
    return loaded, merge_prompts(rows_to_table(loaded), spec)


def spec_for(path, **kw):
    return parse_registry({"sources": [{"key": "t", "licence": "x", "loader": {"path": str(path)}, **kw}]},
                          where="test.yaml").sources[0]


def merge_rows(tmp_path, rows, **kw):
    """Rows written as a JSON list and merged through a one-source registry."""
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return merged(spec_for(path, **kw))[1]


def issues_of(res):
    return [(i.source_row, i.reason, i.field) for i in res.issues]


def test_formats_registry_loads_and_every_source_merges(formats):
    assert formats.keys == ["alpaca_seed_tasks", "sharegpt_glaive_toolcall", "messages_kto_mix",
                            "turns_realpersonachat", "turns_realpersonachat_first"]
    assert {s.key: s.adapter for s in formats.sources}["sharegpt_glaive_toolcall"] == "sharegpt"
    assert formats.get("turns_realpersonachat").turns == "all"
    assert formats.get("turns_realpersonachat_first").turns == "first"
    for s in formats.sources:
        (path,) = s.resolved_paths()
        assert (path.parent / "LICENSE").is_file() and (path.parent / "SOURCE.md").is_file()
        loaded, res = merged(s)
        assert res.table.num_rows > 0, s.key
        assert res.accounting.balanced and res.accounting.rejected == 0, s.key


# ------------------------------------------------------------------------------------ alpaca


def test_alpaca_rows(formats):
    loaded, res = merged(formats.get("alpaca_seed_tasks"))
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (40, 40, 0)
    rows = {r["source_prompt_id"]: r for r in res.table.to_pylist()}
    r0 = rows["seed_tasks_alpaca_40:0"]  # no input: the instruction alone
    assert r0["prompt"].startswith("Is there anything I can eat for a breakfast that doesn't include eggs")
    assert r0["response"].startswith("Yes, you can have 1 oatmeal banana protein shake")
    assert r0["messages"] == [{"role": "user", "content": r0["prompt"]}] and r0["kind"] == "sft"
    r1 = rows["seed_tasks_alpaca_40:1"]  # input after a blank line
    assert r1["prompt"] == "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"
    assert json.loads(r1["metadata"]) == loaded.rows[1]
    with_input = [r for r in res.table.to_pylist() if "\n\n" in r["prompt"]]
    assert len(with_input) == sum(1 for r in loaded.rows if r["input"].strip()) == 26


@pytest.mark.parametrize("dedup_key", ["record", "prompt"])
def test_alpaca_input_is_part_of_the_dedup_key(tmp_path, dedup_key):
    real = json.loads((SAMPLE / "alpaca_seed_tasks" / "seed_tasks_alpaca_40.json").read_text())
    base = real[38]  # "Come up with the synonyms of the word." / "surprisingly"
    other_input = {**base, "input": real[8]["input"]}  # same instruction and output, input "summer"
    res = merge_rows(tmp_path, [base, other_input, dict(base)], kind="sft", adapter="alpaca",
                     dedup_key=dedup_key)
    assert res.table.num_rows == 2
    assert res.table["prompt"].to_pylist() == ["Come up with the synonyms of the word.\n\nsurprisingly",
                                               "Come up with the synonyms of the word.\n\nsummer"]
    (dup,) = res.issues
    assert (dup.source_row, dup.reason, dup.outcome) == (2, "exact_duplicate", "removed")
    assert dup.duplicate_of == "t:rows:0"


def test_alpaca_system_and_history(tmp_path):
    row = {"instruction": "And in French?", "input": "", "output": "bonsoir", "system": "Be brief.",
           "history": [["How do you say good evening in Spanish?", "buenas noches"]]}
    res = merge_rows(tmp_path, [row], kind="sft", adapter="alpaca",
                     fields={"system": "system", "history": "history"})
    (rec,) = res.table.to_pylist()
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user"]
    assert rec["prompt"].startswith("System: Be brief.\n\nUser: How do you say good evening in Spanish?")
    assert rec["prompt"].endswith("User: And in French?") and rec["response"] == "bonsoir"


def test_alpaca_bad_rows(tmp_path):
    good = {"instruction": "Generate a haiku using the following word:", "input": "summer", "output": "x"}
    rows = [
        {"input": "summer", "output": "x"},  # no instruction
        {**good, "instruction": "   "},
        {**good, "output": ""},
        {**good, "input": ["summer"]},
        {**good, "output": None},
        {**good, "history": "not a list"},
        {**good, "history": [["only one"]]},
        good,
    ]
    res = merge_rows(tmp_path, rows, kind="sft", adapter="alpaca", fields={"history": "history"})
    assert res.table.num_rows == 1 and res.accounting.rejected == 7 and res.accounting.balanced
    assert issues_of(res) == [
        (0, "missing_field", "instruction"), (1, "empty_prompt", "instruction"),
        (2, "empty_response", "output"), (3, "not_text", "input"), (4, "missing_field", "output"),
        (5, "bad_history", "history"), (6, "bad_history", "history[0]")]


# ---------------------------------------------------------------------------------- sharegpt


def test_sharegpt_glaive_toolcall(formats):
    loaded, res = merged(formats.get("sharegpt_glaive_toolcall"))
    acc = res.accounting
    assert (loaded.rows_read, acc.rows_in, res.table.num_rows, acc.rejected) == (40, 40, 39, 0)
    (dup,) = res.issues  # row 6 repeats row 4 exactly upstream
    assert (dup.source_row, dup.reason) == (6, "exact_duplicate")
    assert dup.duplicate_of == "sharegpt_glaive_toolcall:glaive_toolcall_en_demo_40:4"
    rows = {r["source_row"]: r for r in res.table.to_pylist()}
    r0 = rows[0]
    # human gpt human function_call observation gpt human | gpt
    assert [m["role"] for m in r0["messages"]] == ["user", "assistant", "user", "assistant", "tool",
                                                   "assistant", "user"]
    assert r0["messages"][3]["content"] == (
        '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}')
    assert r0["messages"][4]["content"].startswith('{"recipes": [{"name": "Chicken and Bell Pepper Stir Fry"')
    assert r0["prompt"].startswith("User: Hi, I have some ingredients and I want to cook something.")
    assert '\n\nAssistant: {"name": "search_recipes"' in r0["prompt"]
    assert '\n\nTool: {"recipes"' in r0["prompt"]
    assert r0["response"].startswith("I'm sorry, but as an AI, I don't have the capability to perform")
    meta = json.loads(r0["metadata"])
    assert json.loads(meta["tools"])[0]["name"] == "search_recipes"
    assert meta["conversations"] == loaded.rows[0]["conversations"]
    # two-turn conversations: the single human turn is the prompt text as it is
    r22 = rows[22]
    assert r22["messages"] == [{"role": "user", "content": loaded.rows[22]["conversations"][0]["value"]}]
    assert r22["prompt"] == loaded.rows[22]["conversations"][0]["value"]
    assert r22["response"] == loaded.rows[22]["conversations"][1]["value"]
    # every record: prompt = all turns but the last, response = the last gpt turn
    for r in res.table.to_pylist():
        conv = loaded.rows[r["source_row"]]["conversations"]
        assert len(r["messages"]) == len(conv) - 1 and r["response"] == conv[-1]["value"]


def test_sharegpt_system_column_and_turn(tmp_path):
    row = {"conversations": [{"from": "system", "value": "You are terse."},
                             {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
           "system": "Use tools when needed.", "tools": [{"name": "f", "parameters": {}}]}
    res = merge_rows(tmp_path, [row], kind="sft", adapter="sharegpt",
                     fields={"system": "system", "tools": "tools"})
    (rec,) = res.table.to_pylist()
    assert rec["messages"] == [{"role": "system", "content": "Use tools when needed."},
                               {"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "hi"}]
    assert rec["prompt"] == "System: Use tools when needed.\n\nSystem: You are terse.\n\nUser: hi"
    meta = json.loads(rec["metadata"])
    assert meta["system"] == "Use tools when needed." and meta["tools"] == [{"name": "f", "parameters": {}}]


def test_sharegpt_bad_rows(tmp_path):
    real = json.loads((SAMPLE / "sharegpt_glaive_toolcall" / "glaive_toolcall_en_demo_40.json").read_text())
    good = real[22]  # human, gpt

    def planted(fn):
        row = copy.deepcopy(good)
        fn(row)
        return row

    rows = [
        planted(lambda r: r.update(conversations="human: hi")),
        planted(lambda r: r.update(conversations=[])),
        planted(lambda r: r["conversations"][1].pop("value")),
        planted(lambda r: r["conversations"][1].update({"from": "bot"})),
        planted(lambda r: r["conversations"][0].update({"value": "  "})),
        planted(lambda r: r["conversations"].pop()),  # ends with the human turn
        planted(lambda r: r["conversations"].pop(0)),  # a gpt turn alone
        planted(lambda r: r.update(tools="[{\"name\": ")),
        planted(lambda r: r.update(tools="{\"name\": \"f\"}")),
        planted(lambda r: r.update(conversations=None)),
        planted(lambda r: r["conversations"].__setitem__(0, "human: hi")),
        good,
    ]
    res = merge_rows(tmp_path, rows, kind="sft", adapter="sharegpt", fields={"tools": "tools"})
    assert res.table.num_rows == 1 and res.accounting.rejected == 11 and res.accounting.balanced
    assert issues_of(res) == [
        (0, "bad_conversations", "conversations"), (1, "empty_conversation", "conversations"),
        (2, "bad_turn", "conversations[1]"), (3, "unknown_role", "conversations[1].from"),
        (4, "empty_content", "conversations[0].value"), (5, "no_final_assistant_turn", "conversations"),
        (6, "no_user_turn", "conversations"), (7, "bad_tools", "tools"), (8, "bad_tools", "tools"),
        (9, "missing_field", "conversations"), (10, "bad_turn", "conversations[0]")]
    details = {i.source_row: i.detail for i in res.issues}
    assert details[3].startswith("'bot'; known: human, gpt, system, tool, function_call, observation")
    assert details[5].startswith("the last turn is 'user'")


def test_sharegpt_prompt_kind_keeps_an_open_conversation(tmp_path):
    real = json.loads((SAMPLE / "sharegpt_glaive_toolcall" / "glaive_toolcall_en_demo_40.json").read_text())
    row = copy.deepcopy(real[0])
    row["conversations"].pop()  # ends with the human turn
    res = merge_rows(tmp_path, [row], kind="prompt", adapter="sharegpt")
    (rec,) = res.table.to_pylist()
    assert len(rec["messages"]) == 7 and rec["messages"][-1]["role"] == "user" and rec["response"] is None


# ---------------------------------------------------------------------------------- messages


def test_messages_kto_label_kept(formats):
    loaded, res = merged(formats.get("messages_kto_mix"))
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (40, 40, 0)
    recs = res.table.to_pylist()
    labels = [json.loads(r["labels"]) for r in recs]
    assert labels == [{"label": row["label"]} for row in loaded.rows]
    assert sum(lab["label"] for lab in labels) == 25
    assert all(r["preference_score"] is None for r in recs)
    r0 = recs[0]
    assert r0["prompt"].startswith("The Federal Trade Commission is going after spyware")
    assert r0["response"].startswith("Ooh ooh ah ah! *giggle* Let me think...")
    r1 = recs[1]  # 6 messages: the prompt is the first 5
    assert [m["role"] for m in r1["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert r1["prompt"].startswith("User: Compare and contrast the roles of the hippocampus and the prefrontal")
    assert r1["response"].startswith("The amygdala plays a crucial role in the emotional processing")
    assert sum(1 for r in recs if len(r["messages"]) > 1) == 10


def test_messages_content_forms(tmp_path):
    row = {"messages": [{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                        {"role": "assistant", "content": None,
                         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": "{}"}}]},
                        {"role": "tool", "content": "4"},
                        {"role": "assistant", "content": "4"}]}
    res = merge_rows(tmp_path, [row], kind="sft", adapter="messages")
    (rec,) = res.table.to_pylist()
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "tool"]
    assert rec["messages"][1]["content"] == "2+2?" and '"name": "add"' in rec["messages"][2]["content"]
    assert rec["response"] == "4" and rec["labels"] is None


def test_messages_bad_rows(tmp_path):
    real = json.loads((SAMPLE / "messages_kto_mix" / "kto_en_demo_40.json").read_text())
    good = real[0]

    def planted(fn):
        row = copy.deepcopy(good)
        fn(row)
        return row

    rows = [
        planted(lambda r: r.update(messages={"role": "user"})),
        planted(lambda r: r.update(messages=[])),
        planted(lambda r: r["messages"][0].pop("role")),
        planted(lambda r: r["messages"][1].update(role="bot")),
        planted(lambda r: r["messages"][1].update(content="")),
        planted(lambda r: r["messages"][0].update(content=3)),
        planted(lambda r: r["messages"][0].update(content=[{"type": "image_url", "image_url": "x"}])),
        planted(lambda r: r["messages"].pop()),  # ends with the user turn
        planted(lambda r: r.update(label="yes")),
        planted(lambda r: r.update(label=None)),
        planted(lambda r: r["messages"].insert(0, "user: hi")),
        good,
    ]
    res = merge_rows(tmp_path, rows, kind="sft", adapter="messages", fields={"label": "label"})
    assert res.table.num_rows == 1 and res.accounting.rejected == 11 and res.accounting.balanced
    assert issues_of(res) == [
        (0, "bad_messages", "messages"), (1, "empty_conversation", "messages"),
        (2, "bad_turn", "messages[0]"), (3, "unknown_role", "messages[1].role"),
        (4, "empty_content", "messages[1].content"), (5, "bad_turn", "messages[0].content"),
        (6, "unsupported_content", "messages[0].content"), (7, "no_final_assistant_turn", "messages"),
        (8, "bad_label", "label"), (9, "missing_field", "label"), (10, "bad_turn", "messages[0]")]


# ------------------------------------------------------------------------- generic `turns`


def test_turns_all(formats):
    loaded, res = merged(formats.get("turns_realpersonachat"))
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (30, 30, 0)
    r1 = {r["source_prompt_id"]: r for r in res.table.to_pylist()}["1"]
    turns = loaded.rows[0]["turns"]
    assert len(turns) == 10 and r1["messages"] == [{"role": "user", "content": t} for t in turns]
    assert r1["prompt"].startswith("User: こんばんは！\n\nUser: 今は何をしていますか？\n\nUser: ")
    assert r1["prompt"].endswith("User: 例えば、どのような甘い飲み物ですか？")
    assert r1["response"] is None and r1["kind"] == "prompt"
    assert json.loads(r1["metadata"])["evaluation"] == {"coherence": 5, "informativeness": 5, "satisfaction": 5}


def test_turns_first(formats):
    loaded, res = merged(formats.get("turns_realpersonachat_first"))
    acc = res.accounting
    assert (loaded.rows_read, acc.rows_in, res.table.num_rows, acc.rejected) == (30, 30, 21, 0)
    # many dialogues open with the same greeting: 9 exact duplicates of an earlier first turn
    assert acc.removed_by_reason == {"exact_duplicate": 9}
    rows = {r["source_prompt_id"]: r for r in res.table.to_pylist()}
    assert rows["1"]["prompt"] == "こんばんは！"
    assert rows["1"]["messages"] == [{"role": "user", "content": "こんばんは！"}]
    assert rows["2"]["prompt"] == "夕飯は何を食べましたか"
    dups = {i.source_row: i.duplicate_of for i in res.issues}
    assert dups[6] == "turns_realpersonachat_first:5"  # 'こんばんは' again


def test_turns_with_system_and_single_string(tmp_path):
    rows = [{"turns": ["Name a prime.", "And an even one?"], "sys": "Be brief."}, {"turns": "Plain text."}]
    res = merge_rows(tmp_path, rows, kind="prompt", adapter="generic", fields={"prompt": "turns", "system": "sys"})
    a, b = res.table.to_pylist()
    assert a["prompt"] == "System: Be brief.\n\nUser: Name a prime.\n\nUser: And an even one?"
    assert b["prompt"] == "Plain text." and b["messages"] == [{"role": "user", "content": "Plain text."}]


def test_turns_bad_rows(tmp_path):
    rows = [{"turns": []}, {"turns": ["a", 3]}, {"turns": ["a", "  "]}, {"turns": {"0": "a"}},
            {"turns": None}, {"turns": ["ok", "fine"]}]
    for mode in ("all", "first"):
        res = merge_rows(tmp_path, rows, kind="prompt", adapter="generic", fields={"prompt": "turns"}, turns=mode)
        assert res.table.num_rows == 1 and res.accounting.rejected == 5
        assert issues_of(res) == [(0, "empty_prompt", "turns"), (1, "not_text", "turns[1]"),
                                  (2, "empty_turn", "turns[1]"), (3, "not_text", "turns"),
                                  (4, "missing_field", "turns")]


# ---------------------------------------------------------------------------------- registry


GOOD = {"key": "g", "kind": "sft", "loader": {"path": "x.json"}, "licence": "MIT"}


@pytest.mark.parametrize("patch, field, words", [
    ({"adapter": "generic", "fields": {"prompt": "turns"}, "turns": "last"}, "turns",
     "must be one of all, first, got 'last'"),
    ({"adapter": "sharegpt", "turns": "first"}, "turns", "only the generic adapter reads it"),
    ({"adapter": "sharegpt", "fields": {"prompt": "x"}}, "fields.prompt",
     "adapter 'sharegpt' has no field 'prompt'; it knows: conversations, system, tools, id"),
    ({"adapter": "sharegpt", "fields": {"conversations": None}}, "fields", "needs conversations mapped"),
    ({"adapter": "alpaca", "fields": {"response": None}}, "fields", "needs prompt+response mapped"),
    ({"adapter": "alpaca", "fields": {"instances": "x"}}, "fields.instances", "adapter 'alpaca' has no field"),
    ({"adapter": "messages", "fields": {"label": 1}}, "fields.label", "must be a column name"),
    ({"adapter": "messages", "kind": "preference"}, "fields", "needs 'chosen' and 'rejected'"),
])
def test_registry_errors_name_file_source_field(patch, field, words):
    with pytest.raises(RegistryError) as err:
        parse_registry({"sources": [{**GOOD, **patch}]}, where="reg.yaml")
    msg = str(err.value)
    assert msg.startswith(f"reg.yaml: source 'g': field '{field}': "), msg
    assert words in msg, msg


def test_registry_defaults():
    alpaca = parse_registry({"sources": [{**GOOD, "adapter": "alpaca"}]}).sources[0]
    assert alpaca.mapped_columns() == {"prompt": "instruction", "input": "input", "response": "output"}
    share = parse_registry({"sources": [{**GOOD, "adapter": "sharegpt"}]}).sources[0]
    assert share.mapped_columns() == {"conversations": "conversations"}  # system / tools: map them
    msgs = parse_registry({"sources": [{**GOOD, "adapter": "messages"}]}).sources[0]
    assert msgs.mapped_columns() == {"messages": "messages"} and msgs.turns == "all"


# ------------------------------------------------------------------ full files in ../shared/data


@needs_shared
def test_full_sharegpt_glaive():
    spec = spec_for(SHARED_DATA / "sharegpt_glaive_toolcall/glaive_toolcall_en_demo.json", kind="sft",
                    adapter="sharegpt", fields={"tools": "tools"})
    loaded, res = merged(spec)
    # 35 rows repeat an earlier row exactly; 3 more repeat a conversation with a different tool list
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (300, 262, 0)
    assert res.accounting.removed_by_reason == {"exact_duplicate": 38}


@needs_shared
def test_full_messages_kto():
    spec = spec_for(SHARED_DATA / "messages_kto_mix/kto_en_demo.json", kind="sft", adapter="messages",
                    fields={"label": "label"})
    loaded, res = merged(spec)
    assert (loaded.rows_read, res.table.num_rows, res.accounting.rejected) == (300, 300, 0)
    assert sorted(res.table["labels"].to_pylist()).count('{"label": true}') == 150
