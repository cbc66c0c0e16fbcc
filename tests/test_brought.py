"""The public datasets users bring (tests/data/brought: hand-written rows in each dataset's public schema,
SOURCE.md): Chatbot Arena and WebDev Arena battles, OpenR1-Math traces, OpenMathReasoning's label filter,
NuminaMath / LIMO's answer rule, HelpSteer3 ties. Each row's outcome is checked against what the rule
makes of that row's own values: the record(s) it becomes, or the reason it is counted under.

No Dagster here (the graph runs these sources in test_demo's session run): the registry entries of
tests/data/brought/registry.yaml through load_rows -> merge_prompts -> the record schemas -> the export."""

from collections import Counter
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from partitions.registry import RegistryError, load_registry, parse_registry
from posttrain_assets.common.label_filter import LabelFilter, LabelFilterError, label_value, parse_condition
from posttrain_assets.export.hf_dataset import preference_config, write_dataset
from posttrain_assets.ingest.adapters import default_id
from posttrain_assets.ingest.comparisons import payload_block, trace_pairs
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.records.unify import cot_from, preference_from

from .conftest import DEMO_REGISTRY

DATA = Path(__file__).parent / "data" / "brought"
REGISTRY = load_registry(DATA / "registry.yaml")


def merged(key: str, **changes):
    """(spec, loaded rows, merge result) of one entry of brought/registry.yaml, fields changed by `changes`."""
    from dataclasses import replace

    spec = REGISTRY.get(key)
    if changes:
        spec = replace(spec, **changes)
    loaded = load_rows(spec)
    return spec, loaded, merge_prompts(rows_to_table(loaded), spec)


def issues_of(res) -> list[tuple]:
    return [(i.source_row, i.reason, i.field, i.outcome) for i in res.issues]


def test_the_demo_registry_holds_these_entries_unchanged():
    demo = load_registry(DEMO_REGISTRY)
    for a in REGISTRY.sources:
        b = demo.get(a.key)
        assert (a.kind, a.adapter, a.fields, a.options, a.label_filter, a.answer_rule, a.model_stages, a.licence) == \
               (b.kind, b.adapter, b.fields, b.options, b.label_filter, b.answer_rule, b.model_stages, b.licence)
        assert a.resolved_paths() == b.resolved_paths()
        assert a.model_stages == ()


# --------------------------------------------------------------------------- pairwise: Chatbot Arena


def test_arena_battles_become_pairs_with_per_turn_lists_and_flagged_ties():
    spec, loaded, res = merged("arena_battles")
    raw = {r["question_id"]: r for r in loaded.rows}
    acc = res.accounting
    assert (acc.rows_in, acc.rows_out, acc.removed, acc.rejected) == (10, 8, 0, 2)
    # the undeclared winner and the diverging user turn: counted rejects naming row and field
    assert issues_of(res) == [(8, "unknown_verdict", "winner", "rejected"),
                              (9, "conversations_diverge", "conversation_b[2]", "rejected")]
    assert "'model_c' is not a declared verdict" in res.issues[0].detail
    assert res.issues[1].detail == "user turn 2 differs from conversation_a's"
    meaning = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad"}
    recs = res.table.to_pylist()
    assert len(recs) == 8
    for rec in recs:
        row = raw[rec["source_prompt_id"]]
        a, b = row["conversation_a"], row["conversation_b"]
        verdict = meaning[row["winner"]]
        users = [m for m in a if m["role"] == "user"]
        assert rec["all_prompt_id"] == f"arena_battles:{row['question_id']}"
        assert rec["messages"] == users and len(users) == row["turn"]
        if verdict in ("tie", "both_bad"):  # the seed's "" strings; both sides kept in source order
            assert (rec["chosen"], rec["rejected"], rec["tie_kind"]) == ("", "", verdict)
            assert (rec["chosen_messages"], rec["rejected_messages"]) == (a, b)
        else:
            win, lose = (a, b) if verdict == "a" else (b, a)
            assert rec["tie_kind"] is None
            assert (rec["chosen_messages"], rec["rejected_messages"]) == (win, lose)  # every turn of each side
            assert (rec["chosen"], rec["rejected"]) == (win[-1]["content"], lose[-1]["content"])
    turns = {r["source_prompt_id"][-1]: len(r["chosen_messages"]) for r in recs}
    assert turns == {"1": 2, "2": 2, "3": 4, "4": 2, "5": 2, "6": 6, "7": 2, "8": 4}
    assert Counter(r["language"] for r in recs) == {"en": 3, "ja": 3, "zh": 2}
    # q4 and q7: two ties on one prompt with different answers are both kept by exact dedup
    q4, q7 = (next(r for r in recs if r["source_prompt_id"].endswith(k)) for k in "47")
    assert q4["prompt"] == q7["prompt"] and q4["chosen_messages"] != q7["chosen_messages"]

    pref, issues = preference_from(res.table, "preference")
    assert issues == [] and pref.num_rows == 8
    assert Counter((r["tie"], r["tie_kind"]) for r in pref.to_pylist()) == {
        (False, None): 5, (True, "tie"): 2, (True, "both_bad"): 1}
    assert pref["chosen_messages"].to_pylist() == res.table["chosen_messages"].to_pylist()


def test_a_verdict_table_of_ones_own_reads_other_battle_logs():
    """options.verdicts: any values (here 'A', 'B', 'draw'); a row with another value is named."""
    base = REGISTRY.get("arena_battles")
    entry = {"key": "duel", "kind": "preference", "adapter": "pairwise", "licence": "MIT",
             "loader": {"path": str(DATA / "arena" / "arena_battles.jsonl")}, "fields": {"winner": "verdict"},
             "options": {"verdicts": {"A": "a", "B": "b", "draw": "tie"}}}
    spec = parse_registry({"sources": [entry]}).sources[0]
    assert spec.option("payload") == "object" and base.option("verdicts")["tie (bothbad)"] == "both_bad"
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]
    rows = [{"verdict": v, "conversation_a": conv, "conversation_b": conv[:1] + [{"role": "assistant", "content": "y"}]}
            for v in ("B", "draw", "model_a")]
    from posttrain_assets.ingest.loaders import LoadedRows

    loaded = LoadedRows(rows=rows, source_files=["duel.jsonl"] * 3, source_rows=[0, 1, 2], rows_read=3)
    res = merge_prompts(rows_to_table(loaded), spec)
    assert [(r["chosen"], r["rejected"], r["tie_kind"]) for r in res.table.to_pylist()] == [("y", "x", None),
                                                                                             ("", "", "tie")]
    assert issues_of(res) == [(2, "unknown_verdict", "verdict", "rejected")]


# --------------------------------------------------------------------------- pairwise: WebDev Arena


def test_webdev_battles_keep_the_generated_code_in_the_answer():
    spec, loaded, res = merged("webdev_battles")
    assert (res.accounting.rows_in, res.accounting.rows_out, res.issues) == (5, 5, [])
    recs = {r["source_prompt_id"]: r for r in res.table.to_pylist()}
    for row in loaded.rows:
        rec = recs[row["question_id"]]
        for side, conv in (("a", row["conversation_a"]), ("b", row["conversation_b"])):
            mine = rec["chosen_messages"] if (row["winner"], side) in (("model_a", "a"), ("model_b", "b"), ("tie", "a"),
                                                                       ("tie (bothbad)", "a")) else rec["rejected_messages"]
            assert len(mine) == len(conv)
            for turn, got in zip(conv, mine):
                text = turn["content"] if isinstance(turn["content"], str) else "\n".join(p["text"] for p in turn["content"])
                if turn["role"] == "assistant":  # the text, then the code under its file path
                    code = turn["object"]["code"].rstrip()
                    assert got["content"] == f"{text.rstrip()}\n\n`{turn['object']['file_path']}`\n```\n{code}\n```"
                else:
                    assert got["content"] == text
        assert json.loads(rec["metadata"])["conversation_a"] == row["conversation_a"]  # the payload kept whole
    assert [recs[k]["tie_kind"] for k in sorted(recs)] == [None, None, "tie", "both_bad", None]
    # w5: one side's assistant content is a plain string, the other's typed parts: both read
    w5 = loaded.rows[4]
    assert isinstance(w5["conversation_a"][1]["content"], str) and isinstance(w5["conversation_b"][1]["content"], list)
    assert payload_block({"code": " "}) == "" and payload_block({"code": "x", "file_path": ""}) == "```\nx\n```"


def test_the_payload_can_stay_out_of_the_text():
    spec, loaded, res = merged("webdev_battles", options={**REGISTRY.get("webdev_battles").options,
                                                          "payload_in_content": False})
    w1 = res.table.to_pylist()[0]
    assert "```" not in w1["chosen"] and w1["chosen"] == loaded.rows[0]["conversation_a"][1]["content"][0]["text"]


# --------------------------------------------------------------------------- multi_trace: OpenR1-Math

#: uuid label -> (pair (chosen, rejected) or the reason none) under each rule, from SOURCE.md's verdicts
OPENR1 = {
    # label: best_vs_worst, all_pairs, seed
    "d1": ((0, 1), [(0, 1)], (0, 1)),
    "d2": ("no_incorrect_trace", "no_incorrect_trace", "no_incorrect_trace"),
    "d3": ("no_correct_trace", "no_correct_trace", "no_correct_trace"),
    "d4": ((0, 1), [(0, 1)], (0, 1)),  # Math-Verify null on trace 0: the LLM's true decides
    "d5": ("incomplete", "incomplete", (0, 1)),  # the wrong trace was cut at the length limit
    "d6": ((1, 0), [(1, 0)], (1, 0)),
    "e1": ((0, 1), [(0, 1), (0, 3), (2, 1), (2, 3)], "not_two_traces"),
    "e2": ("no_incorrect_trace", "no_incorrect_trace", "not_two_traces"),
    "e3": ("no_correct_trace", "no_correct_trace", "not_two_traces"),
    "e4": ((0, 1), [(0, 1), (3, 1)], "not_two_traces"),  # trace 2 (wrong) is truncated: no pair uses it
    "e5": ((1, 0), [(1, 0), (1, 2)], "not_two_traces"),
}
RULES = ("best_vs_worst", "all_pairs", "seed")


def _label(uuid: str) -> str:
    return uuid[-2:]


@pytest.mark.parametrize("rule", RULES)
def test_openr1_traces_make_pairs_under_each_rule(rule):
    spec, loaded, res = merged("openr1_math", options={"pair_rule": rule, "cot_rows": "messages"})
    rows = {(f, r): row for f, r, row in zip(loaded.source_files, loaded.source_rows, loaded.rows)}
    assert sorted({f for f, _ in rows}) == ["default/train-00000-of-00001.parquet",
                                            "extended/train-00000-of-00001.parquet"]
    pairs = [r for r in res.table.to_pylist() if r["chosen"] is not None]
    cots = [r for r in res.table.to_pylist() if r["response"] is not None]
    assert len(pairs) + len(cots) == res.table.num_rows
    want_pairs, want_removed = {}, Counter()
    for (f, r), row in rows.items():
        label = _label(row["uuid"])
        if label == "e6":
            continue
        expect = OPENR1[label][RULES.index(rule)]
        if isinstance(expect, str):
            want_removed[expect] += 1
        else:
            for i, j in expect if isinstance(expect, list) else [expect]:
                want_pairs[(default_id(f, r), i, j)] = row
    got = {}
    for p in pairs:
        meta = json.loads(p["metadata"])
        pid = p["source_prompt_id"].split("#")[0]
        got[(pid, meta["chosen_trace"], meta["rejected_trace"])] = p
        assert meta["pair_rule"] == rule and "generations" not in meta and "messages" not in meta
    assert set(got) == set(want_pairs)
    for key, p in got.items():
        row, (_, i, j) = want_pairs[key], key
        assert (p["chosen"], p["rejected"]) == (row["generations"][i], row["generations"][j])
        assert p["chosen_messages"] == [{"role": "user", "content": row["problem"]},
                                        {"role": "assistant", "content": row["generations"][i]}]
        assert p["reference_answer"] == row["answer"] and p["prompt"] == row["problem"]
    d4 = next(p for k, p in got.items() if _label(want_pairs[k]["uuid"]) == "d4")
    assert json.loads(d4["metadata"])["chosen_verdict_by"] == "fallback_verdicts"
    # every problem (but e6) gives its CoT row: the `messages` answer
    assert len(cots) == 11 and all(c["response"] == rows[(c["source_file"], c["source_row"])]["messages"][-1]["content"]
                                   for c in cots)
    # e6: 2 verdicts for 3 traces: the whole row is a reject naming the field
    assert [(i.source_file, i.source_row, i.reason, i.field, i.detail) for i in res.issues if i.outcome == "rejected"] == [
        ("extended/train-00000-of-00001.parquet", 5, "verdicts_length_mismatch", "correctness_math_verify",
         "2 values for 3 traces")]
    assert Counter(i.reason for i in res.issues if i.outcome == "removed") == want_removed
    acc = res.accounting
    assert acc.rows_in == 11 * 2 + 1 + sum(len(v) - 1 for v in (OPENR1[k][RULES.index(rule)] for k in OPENR1)
                                            if isinstance(v, list))
    assert acc.rows_in == acc.rows_out + acc.removed + acc.rejected and acc.rows_out == res.table.num_rows


def test_openr1_records_split_into_cot_rows_and_pairs():
    spec, loaded, res = merged("openr1_math")
    cot, cot_issues = cot_from(res.table, spec.answer_rule)
    pref, pref_issues = preference_from(res.table, "pairs")
    assert (cot.num_rows, pref.num_rows) == (11, 6)
    assert Counter(i.reason for i in cot_issues) == {"preference_pair": 6}
    assert Counter(i.reason for i in pref_issues) == {"cot_trace": 11}
    assert set(cot["split_rule"].to_pylist()) == {"think_tags"} and not any(pref["tie"].to_pylist())
    # ids: the two configs' files have the same name; their rows stay distinct under the relative path
    ids = res.table["all_prompt_id"].to_pylist()
    assert "openr1_math:default/train-00000-of-00001:0" in ids and "openr1_math:extended/train-00000-of-00001:0" in ids
    assert len(set(ids)) == len(ids)


def test_openr1_correct_traces_as_cot_rows_keep_the_long_trace_whole():
    spec, loaded, res = merged("openr1_math", options={"pair_rule": "best_vs_worst", "cot_rows": "correct"},
                               fields={"id": "uuid"})
    rows = {r["uuid"]: r for r in loaded.rows}
    cots = [r for r in res.table.to_pylist() if r["response"] is not None]
    want = {f"{u}#g{i}" for u, r in rows.items() if _label(u) != "e6"
            for i, (ok, done) in enumerate(zip(r["correctness_math_verify"], r["is_reasoning_complete"]))
            if (ok if ok is not None else (r["correctness_llama"] or [None] * 9)[i]) is True and done}
    assert {c["source_prompt_id"] for c in cots} == want
    e4 = next(u for u in rows if _label(u) == "e4")
    long = next(c for c in cots if c["source_prompt_id"] == f"{e4}#g3")
    assert long["response"] == rows[e4]["generations"][3] and len(long["response"]) > 120_000
    assert json.loads(long["metadata"])["trace"] == 3
    # problems without a correct and complete trace are counted, not dropped
    removed = Counter(i.reason for i in res.issues if i.outcome == "removed")
    # d3 and e3 have no correct trace: no CoT row and no pair (2 + 2); d2, e2 no incorrect one; d5's is cut
    assert removed == {"no_correct_trace": 4, "no_incorrect_trace": 2, "incomplete": 1}


def test_trace_pair_rules_on_edge_verdicts():
    t, f, n = True, False, None
    assert trace_pairs([n, n], [n, n], [t, t], "best_vs_worst") == ([], "no_verdict")
    # a Math-Verify decision is preferred over the LLM's, order breaks ties
    assert trace_pairs([t, t, f], ["fallback_verdicts", "verdicts", "verdicts"], [t, t, t], "best_vs_worst") == \
        ([(1, 2)], None)
    assert trace_pairs([t, f], ["verdicts"] * 2, [f, t], "best_vs_worst") == ([], "incomplete")
    assert trace_pairs([t, f, f], ["verdicts"] * 3, [t, t, t], "seed") == ([], "not_two_traces")


# --------------------------------------------------------------------------- label filter: OpenMathReasoning


def test_openmathreasoning_keeps_the_hard_problems_by_its_label_alone():
    spec, loaded, res = merged("openmathreasoning_hard")
    assert spec.label_filter == ("pass_rate_72b_tir <= 0.1",) and spec.model_stages == ()
    kept = [loaded.rows[loaded.source_rows.index(r)]["pass_rate_72b_tir"] for r in res.table["source_row"].to_pylist()]
    assert kept == ["0.03125", "0.0", "0.1", "0.09375", "0.0625"]
    assert [(i.source_row, i.reason, i.field) for i in res.issues] == [
        (3, "label_rule_failed", "pass_rate_72b_tir"), (4, "label_rule_failed", "pass_rate_72b_tir"),
        (5, "label_rule_failed", "pass_rate_72b_tir"), (6, "label_not_available", "pass_rate_72b_tir"),
        (7, "label_not_available", "pass_rate_72b_tir"), (8, "label_missing", "pass_rate_72b_tir"),
        (9, "label_unparsable", "pass_rate_72b_tir")]
    assert {i.outcome for i in res.issues} == {"removed"}
    assert res.issues[0].detail == "pass_rate_72b_tir = '0.125' fails pass_rate_72b_tir <= 0.1"
    assert (res.accounting.rows_in, res.accounting.rows_out, res.accounting.removed) == (12, 5, 7)
    cot, _ = cot_from(res.table)  # the text after </think> is the answer; its \boxed{} is the label's answer
    from posttrain_assets.common.answers import last_boxed

    assert [last_boxed(a) for a in cot["answer"].to_pylist()] == [
        loaded.rows[loaded.source_rows.index(r)]["expected_answer"] for r in res.table["source_row"].to_pylist()]
    assert set(cot["split_rule"].to_pylist()) == {"think_tags"}


@pytest.mark.parametrize("conditions, kept_rows", [
    (["pass_rate_72b_tir < 0.1"], [0, 1, 10, 11]),
    (["0.05 <= pass_rate_72b_tir <= 0.5"], [2, 3, 4, 10, 11]),
    (["pass_rate_72b_tir == 0"], [1]),
    (["pass_rate_72b_tir != 0", "pass_rate_72b_tir < 0.2"], [0, 2, 3, 10, 11]),
    (["pass_rate_72b_tir >= 1"], [5]),
])
def test_label_conditions(conditions, kept_rows):
    spec, loaded, res = merged("openmathreasoning_hard", label_filter=tuple(conditions))
    assert res.table["source_row"].to_pylist() == kept_rows
    assert res.accounting.removed == 12 - len(kept_rows)


def test_label_values_and_bad_conditions():
    assert [label_value(v) for v in ("0.03125", 2, " 1e-1 ", "N/A", "", float("nan"), None, "abc", True, [1])] == [
        (0.03125, None), (2.0, None), (0.1, None), (None, "label_not_available"), (None, "label_not_available"),
        (None, "label_not_available"), (None, "label_missing"), (None, "label_unparsable"),
        (None, "label_unparsable"), (None, "label_unparsable")]
    assert LabelFilter(["correctness_count >= 2"]).judge({"correctness_count": 1})[0] == "label_rule_failed"
    assert LabelFilter(["correctness_count >= 2"]).judge({"correctness_count": 3}) is None
    assert LabelFilter(["x > 0"]).judge({})[0] == "label_missing"
    for bad in ("pass_rate <= high", "pass_rate ~ 0.1", "0.5 <= x <= 0.1", "<= 0.1"):
        with pytest.raises(LabelFilterError):
            parse_condition(bad)


# --------------------------------------------------------------------------- answer rule: NuminaMath, LIMO


@pytest.mark.parametrize("key", ["numina_cot", "limo"])
def test_answer_rule_none_puts_everything_in_thinking(key):
    spec, loaded, res = merged(key)
    cot, _ = cot_from(res.table, spec.answer_rule)
    assert spec.answer_rule == "none"
    assert cot["answer"].to_pylist() == [""] * cot.num_rows and set(cot["split_rule"].to_pylist()) == {"unsplit"}
    assert cot["thinking"].to_pylist() == [r[spec.column("response")].strip() for r in loaded.rows]
    # the default (auto) takes the last \boxed{} where there is one: 3 of Numina's 4, all of LIMO's
    auto, _ = cot_from(res.table, "auto")
    from posttrain_assets.common.answers import last_boxed

    assert auto["answer"].to_pylist() == [last_boxed(r[spec.column("response")]) or "" for r in loaded.rows]
    assert auto["split_rule"].to_pylist().count("boxed") == {"numina_cot": 3, "limo": 3}[key]


def test_answer_rules_pick_one_marker():
    from posttrain_assets.records.unify import split_reasoning

    text = "a \\boxed{3} b\n#### 4"
    assert split_reasoning(text)[1:] == ("4", "gsm8k_marker")
    assert split_reasoning(text, answer_rule="boxed")[1:] == ("3", "boxed")
    assert split_reasoning(text, answer_rule="gsm8k")[1:] == ("4", "gsm8k_marker")
    assert split_reasoning(text, answer_rule="none") == (text, "", "unsplit")
    assert split_reasoning("<think>r</think> 5", answer_rule="none") == ("r", "5", "think_tags")


# --------------------------------------------------------------------------- HelpSteer3 ties


def test_helpsteer3_ties_on_one_prompt_are_two_rows():
    spec, loaded, res = merged("helpsteer3_ties")
    assert (res.accounting.rows_in, res.accounting.rows_out, res.issues) == (5, 5, [])
    recs = res.table.to_pylist()
    for rec, row in zip(recs, loaded.rows):
        ctx = row["context"]
        score = row["overall_preference"]
        first, second = (row["response1"], row["response2"]) if score <= 0 else (row["response2"], row["response1"])
        assert rec["chosen_messages"] == ctx + [{"role": "assistant", "content": first}]
        assert rec["rejected_messages"] == ctx + [{"role": "assistant", "content": second}]
        assert rec["tie_kind"] == ("tie" if score == 0 else None)
        assert (rec["chosen"], rec["rejected"]) == (("", "") if score == 0 else (first, second))
    assert recs[1]["prompt"] == recs[2]["prompt"] and len(recs[3]["chosen_messages"]) == 4


# --------------------------------------------------------------------------- export: message lists round-trip


def test_preference_message_lists_round_trip_through_the_export(tmp_path):
    tables = []
    for key in ("arena_battles", "helpsteer3_ties", "openr1_math"):
        spec, _, res = merged(key)
        t, _ = preference_from(res.table, "pairs" if spec.adapter == "multi_trace" else spec.kind)
        tables.append(t)
    pref = pa.concat_tables(tables)
    write_dataset({"preference": pref}, str(tmp_path / "out"), max_shard_bytes=1 << 20)
    files = sorted((tmp_path / "out" / "data" / "preference").glob("*.parquet"))
    assert pq.read_schema(files[0]).field("chosen_messages").type == pref.schema.field("chosen_messages").type
    import datasets

    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == pref.num_rows == 8 + 5 + 6
    assert ds["chosen_messages"] == pref["chosen_messages"].to_pylist()
    assert ds["rejected_messages"] == pref["rejected_messages"].to_pylist()
    assert ds["tie_kind"] == pref["tie_kind"].to_pylist()
    multi = [m for m in ds["chosen_messages"] if len(m) == 6][0]
    assert [m["role"] for m in multi] == ["user", "assistant"] * 3
    # preference_format "trl": chosen / rejected are the message lists, the strings left out
    trl = preference_config(pref, "trl")
    write_dataset({"preference": trl}, str(tmp_path / "trl"), max_shard_bytes=1 << 20)
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "trl" / "data" / "preference"), split="train",
                               cache_dir=str(tmp_path / "cache2"))
    assert ds.column_names[:2] == ["chosen", "rejected"] and "prompt" not in ds.column_names
    assert ds["chosen"] == pref["chosen_messages"].to_pylist() and ds["source"] == pref["source"].to_pylist()
    with pytest.raises(ValueError, match="preference_format must be one of both, trl"):
        preference_config(pref, "dpo")


# --------------------------------------------------------------------------- hub configs and local snapshots


def _snapshot(tmp_path: Path) -> Path:
    """A local copy in the hub's layout: one folder per config + a README with the `configs` block."""
    import shutil

    root = tmp_path / "OpenR1-Math-220k"
    for config in ("default", "extended"):
        (root / config).mkdir(parents=True)
        shutil.copy(DATA / "openr1" / config / "train-00000-of-00001.parquet", root / config)
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train-*\n" for c in ("default", "extended"))
        + "---\n", encoding="utf-8")
    return root


def _entry(loader: dict, **more) -> dict:
    return {"key": "openr1", "kind": "cot", "adapter": "multi_trace", "licence": "Apache-2.0", "loader": loader, **more}


def test_one_entry_reads_several_hub_configs_as_a_glob_reads_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    root = _snapshot(tmp_path)
    hub = parse_registry({"sources": [_entry({"hub": str(root), "config": ["default", "extended"]})]}).sources[0]
    local = parse_registry({"sources": [_entry({"path": str(root / "*" / "train-*.parquet")})]}).sources[0]
    assert hub.loader.hub_parts() == [("default", "train"), ("extended", "train")]
    a, b = load_rows(hub), load_rows(local)
    assert a.rows == b.rows and len(a.rows) == 12
    assert sorted(set(a.source_files)) == ["default/train", "extended/train"]
    assert sorted(set(b.source_files)) == ["default/train-00000-of-00001.parquet", "extended/train-00000-of-00001.parquet"]
    ids = [default_id(f, r) for f, r in zip(a.source_files, a.source_rows)]
    assert ids[0] == "default/train:0" and ids[6] == "extended/train:0" and len(set(ids)) == 12
    # sharded across the two configs: shard 1 of 5-row shards spans the end of default and extended's start
    sharded = parse_registry({"sources": [_entry({"hub": str(root), "config": ["default", "extended"]},
                                                 shard_rows=5)]})
    assert sharded.keys == ["openr1.s0000", "openr1.s0001", "openr1.s0002"]
    shard = load_rows(sharded.get("openr1.s0001"))
    assert list(zip(shard.source_files, shard.source_rows)) == [("default/train", 5)] + [("extended/train", i)
                                                                                         for i in range(4)]
    assert shard.rows == a.rows[5:10]


@pytest.mark.parametrize("change, field, message", [
    ({"options": {"pair_rule": "worst"}}, "options.pair_rule", "must be one of best_vs_worst, all_pairs, seed"),
    ({"options": {"color": 1}}, "options.color", "unknown option of adapter 'multi_trace'"),
    ({"kind": "sft"}, "kind", "adapter 'multi_trace' writes cot rows"),
    ({"answer_rule": "last_number"}, "answer_rule", "must be one of auto, boxed, gsm8k, none"),
    ({"label_filter": "pass_rate < high"}, "label_filter", "cannot parse condition"),
    ({"label_filter": ["x < 1", 3]}, "label_filter", "must be a condition or a list"),
    ({"loader": {"path": "x.parquet", "config": ["a", "b"]}}, "loader.config", "a list of names is for a hub dataset"),
    ({"loader": {"hub": "x/y", "split": []}}, "loader.split", "non-empty list of distinct names"),
])
def test_registry_errors_name_the_field(change, field, message):
    entry = {**_entry({"path": "x.parquet"}), **change}
    with pytest.raises(RegistryError) as err:
        parse_registry({"sources": [entry]}, where="reg.yaml")
    assert f"reg.yaml: source 'openr1': field '{field}': " in str(err.value) and message in str(err.value)


def test_pairwise_options_are_checked():
    entry = {"key": "arena", "kind": "preference", "adapter": "pairwise", "licence": "MIT", "loader": {"path": "x"}}
    for opts, msg in (({"verdicts": {"A": "a", "B": "win"}}, "must map each winner value to one of a, b, tie, both_bad"),
                      ({"verdicts": {"A": "a", "T": "tie"}}, "needs a value meaning a and one meaning b"),
                      ({"payload_in_content": "yes"}, "must be true or false")):
        with pytest.raises(RegistryError, match=msg):
            parse_registry({"sources": [{**entry, "options": opts}]})
    with pytest.raises(RegistryError, match="adapter 'generic' has no options"):
        parse_registry({"sources": [{**entry, "kind": "prompt", "adapter": "generic", "fields": {"prompt": "p"},
                                     "options": {"x": 1}}]})
