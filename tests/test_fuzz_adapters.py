"""Fuzzed rows through every adapter, on the path ingest takes (JSONL file -> load_rows -> raw_records'
table -> merge_prompts): every row ends as a record or a counted reject with a reason, never an
exception; rows_in = rows_out + removed + rejected; the output and rejects tables write as Parquet.

Rows are valid-shaped with any field swapped for garbage (wrong types, nulls, nested lists and
objects, Japanese and other unicode, 250,000-character strings), fields dropped, or not objects at
all. Reproducible: `derandomize=True` (the same examples on every run and in CI).
"""

import io
import json
import os
import tempfile
from collections import Counter

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from partitions.registry import ADAPTERS as DECLARED, parse_registry
from posttrain_assets.common.accounting import rejects_table
from posttrain_assets.ingest.adapters import ADAPTERS, GROUPERS
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import FieldMappingError, merge_prompts

EXAMPLES = 100  # per adapter
JA = ["日本の首都はどこですか？", "次の文章を要約してください：", "ありがとう", "　", "カタカナとひらがな、漢字。"]
HUGE = ["x" * 250_000, "長" * 250_000]  # longer than max_prompt_chars (200,000)

plain = st.text(min_size=1, max_size=40)
text = st.one_of(plain, plain, plain, st.sampled_from(JA + ["", " ", "\n\t"]), st.sampled_from(HUGE))
scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False), text)
garbage = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                       max_leaves=12)


def maybe(valid):
    """Mostly the valid shape, sometimes anything at all."""
    return st.one_of(valid, valid, valid, garbage)


def same(strategy):
    return strategy


def transcripts(m):
    """hh_rlhf: chosen / rejected sharing their turns before the final assistant turn."""
    turn = st.tuples(m(st.sampled_from(["Human", "Assistant"])), text)
    shared = st.lists(turn, min_size=1, max_size=3).map(lambda ts: "".join(f"\n\n{r}: {t}" for r, t in ts))
    return st.builds(lambda p, a, b: {"chosen": f"{p}\n\nAssistant: {a}", "rejected": f"{p}\n\nAssistant: {b}"},
                     shared, text, text)


def oasst_message(m, role: str = "prompter", depth: int = 2):
    """A message tree with alternating roles; m() swaps any part for garbage in the noisy rows."""
    child = "assistant" if role == "prompter" else "prompter"
    fields = {"message_id": m(st.text(max_size=6)), "role": m(st.just(role)), "text": m(text),
              "deleted": m(st.just(False) | st.booleans()), "rank": m(st.none() | st.integers(0, 3)),
              "labels": m(st.dictionaries(st.sampled_from(["quality", "toxicity"]), st.floats(0, 1)))}
    if depth:
        fields["replies"] = m(st.lists(oasst_message(m, child, depth - 1), max_size=3))
    return st.fixed_dictionaries(fields)


def turns(m, key: str, value: str, roles: tuple[str, str]):
    """A conversation of alternating (user, assistant) turns as {key: role, value: text} objects."""
    pair = st.tuples(st.fixed_dictionaries({key: m(st.just(roles[0])), value: m(text)}),
                     st.fixed_dictionaries({key: m(st.just(roles[1])), value: m(text)}))
    return st.lists(pair, min_size=1, max_size=2).map(lambda ps: [t for p in ps for t in p])


def columns(adapter: str, m) -> dict:
    """Valid-shaped values of each adapter's columns; with m=maybe any nested part may be garbage."""
    scores = {k: m(st.integers(0, 4)) for k in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}
    return {
        "generic": {"prompt": text | st.lists(m(text), min_size=1, max_size=3), "response": text, "system": text,
                    "id": text},
        "gsm8k": {"question": text, "answer": text.map(lambda a: f"{a}\n#### {len(a)}") | text},
        "hh_rlhf": {"pair": transcripts(m)},  # unpacked into chosen / rejected by rows_for
        "self_instruct": {"id": text, "instruction": text, "instances": st.lists(
            st.fixed_dictionaries({"input": m(text), "output": m(text)}), min_size=1, max_size=3)},
        "oasst_tree": {"prompt": oasst_message(m)},
        "helpsteer3": {"context": text | turns(m, "role", "content", ("user", "assistant")).map(lambda t: t[:-1]),
                       "response1": text, "response2": text, "overall_preference": st.integers(-4, 4)},
        "alpaca": {"instruction": text, "input": text, "output": text, "system": text,
                   "history": st.lists(st.lists(m(text), min_size=2, max_size=2), max_size=2)},
        "sharegpt": {"conversations": turns(m, "from", "value", ("human", "gpt")), "system": text,
                     "tools": st.sampled_from(["", "[]", '[{"name": "f"}]', "{not json", '{"a": 1}'])},
        "messages": {"messages": turns(m, "role", "content", ("user", "assistant")), "label": st.booleans()},
        "helpsteer": {"prompt": text.map(lambda p: f"{p}\n<extra_id_1>Assistant\nok\n<extra_id_1>User\n{p}") | text,
                      "response": text, **scores},
        "oasst_messages": {"message_id": st.sampled_from(["m1", "m2", "m3", "m4", ""]),
                           "parent_id": st.sampled_from([None, None, "m1", "m2", "m3", "m9"]),
                           "role": st.sampled_from(["prompter", "assistant", "moderator"]), "text": text,
                           "message_tree_id": st.sampled_from(["t1", "t2"]), "quality": st.integers(1, 5)},
        "pairwise": {"battle": battle(m), "winner": m(st.sampled_from(["model_a", "model_b", "tie",
                                                                          "tie (bothbad)", "model_c"]))},
        "multi_trace": {"problem": m(text), "traced": traced(m), "answer": m(text),
                        "messages": m(turns(m, "role", "content", ("user", "assistant")))},
    }[adapter]


def battle(m):
    """pairwise: two conversations sharing their user turns (string or typed-part content, a WebDev
    payload on some assistant turns); unpacked into conversation_a / conversation_b by rows_for."""
    content = st.one_of(m(text), st.lists(st.fixed_dictionaries({"type": m(st.just("text")), "text": m(text)}),
                                          min_size=1, max_size=2))
    assistant = st.fixed_dictionaries({"role": m(st.just("assistant")), "content": content},
                                      optional={"object": m(st.fixed_dictionaries({"code": m(text),
                                                                                  "file_path": m(text)}))})
    users = st.lists(st.fixed_dictionaries({"role": m(st.just("user")), "content": content}), min_size=1, max_size=2)

    def sides(us, a, b):
        return {"conversation_a": [t for u in us for t in (u, a)], "conversation_b": [t for u in us for t in (u, b)]}
    return st.builds(sides, users, assistant, assistant)


def traced(m):
    """multi_trace: n traces with verdict / completeness / finish lists of (mostly) the same length."""
    def lists(n):
        flags = st.lists(st.none() | st.booleans(), min_size=n, max_size=n)
        return st.fixed_dictionaries({
            "generations": m(st.lists(text, min_size=n, max_size=n)), "correctness_math_verify": m(flags),
            "correctness_llama": m(st.none() | flags), "is_reasoning_complete": m(flags),
            "finish_reasons": m(st.none() | st.lists(st.sampled_from(["stop", "length"]), min_size=n, max_size=n))})
    return st.integers(0, 4).flatmap(lists)


#: the mapping of optional fields a registry entry would give (so that they are read too)
FIELDS = {"generic": {"prompt": "prompt", "response": "response", "system": "system", "id": "id"},
          "alpaca": {"system": "system", "history": "history"}, "sharegpt": {"system": "system", "tools": "tools"},
          "messages": {"label": "label"}, "oasst_messages": {"quality": "quality"}}
KIND = {"hh_rlhf": "preference", "helpsteer3": "preference", "gsm8k": "cot", "generic": "prompt",
        "pairwise": "preference", "multi_trace": "cot"}


def _unpack(row: dict) -> dict:
    for name in ("pair", "battle", "traced"):  # strategies that give several columns at once
        pair = row.pop(name, None)
        row = {**pair, **row} if isinstance(pair, dict) else row
    return row


def rows_for(adapter: str):
    """Valid-shaped rows (every column present), noisy ones (columns dropped or garbage), non-objects."""
    valid = st.fixed_dictionaries(columns(adapter, same)).map(_unpack)
    noisy = st.fixed_dictionaries({}, optional={c: maybe(v) for c, v in columns(adapter, maybe).items()}).map(_unpack)
    return st.lists(st.one_of(valid, valid, noisy, noisy, garbage), min_size=1, max_size=8)


def spec_for(adapter: str, path: str):
    entry = {"key": "fuzz", "kind": KIND.get(adapter, "sft"), "adapter": adapter, "licence": "MIT",
             "loader": {"path": path, "format": "jsonl"}, "fields": FIELDS.get(adapter, {})}
    return parse_registry({"sources": [entry]}).sources[0]


def test_every_adapter_is_fuzzed():
    assert set(ADAPTERS) == set(DECLARED)  # one table: each adapter registers its own declaration
    for adapter in ADAPTERS:
        columns(adapter, same)  # a KeyError names an adapter the fuzzing does not know


#: rows that crashed an adapter before its fix (kept as explicit examples): adapter -> rows
CRASHED = {
    "oasst_tree": [[{"prompt": {"message_id": "", "role": [], "text": ""}}],  # unhashable role
                   [{"prompt": {"message_id": "a", "role": "prompter", "text": "hi", "replies": [  # rank not int64
                       {"message_id": "b", "role": "assistant", "text": "yo", "rank": r}]}} for r in ("x", True, 2**70)]],
    "self_instruct": [[{"id": "1", "instruction": "i", "instances": [{"input": 3, "output": "o"}]}]],
    "helpsteer3": [[{"context": [{"role": "user", "content": 5}], "response1": "a", "response2": "b",
                     "overall_preference": 1}]],
}


def check_rows(adapter: str, rows: list) -> tuple[int, dict]:
    """(records written, rejects by reason) of one fuzzed file; asserts the invariants."""
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        spec = spec_for(adapter, path)
        loaded = load_rows(spec)
    finally:
        os.unlink(path)
    assert loaded.rows_read == len(rows) == len(loaded.rows) + len(loaded.issues)
    assert all(i.reason in ("not_an_object", "non_finite_number") for i in loaded.issues)  # inf: not JSON
    raw = rows_to_table(loaded)
    try:
        res = merge_prompts(raw, spec)
    except FieldMappingError as exc:  # the one source-level error: a mapped column in no row at all
        col = str(exc).split(" -> ", 1)[1].split("'")[1]
        assert not any(col in r for r in loaded.rows), exc
        return 0, {"field_mapping_error": 1}
    acc, table = res.accounting, res.table
    assert acc.rows_in == acc.rows_out + acc.removed + acc.rejected and acc.rows_out == table.num_rows
    assert sum(acc.rejected_by_reason.values()) == acc.rejected
    assert all(i.reason for i in res.issues)
    if adapter not in GROUPERS and adapter != "oasst_tree":  # one row -> its records or one reject
        ended = set(table["source_row"].to_pylist()) | {i.source_row for i in res.issues}
        assert ended == set(loaded.source_rows)
    assert all(p.strip() for p in table["prompt"].to_pylist())
    assert len(set(table["all_prompt_id"].to_pylist())) == table.num_rows
    for t in (table, rejects_table("fuzz", "merged_prompts", loaded.issues + res.issues)):
        pq.write_table(t, io.BytesIO())  # what the IO manager and write_rejects write
    return table.num_rows, {**Counter(i.reason for i in loaded.issues), **acc.rejected_by_reason}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_fuzzed_rows_end_as_records_or_counted_rejects(adapter):
    records, reasons = [], Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(rows_for(adapter))
    def fuzz(rows):
        n, rejected = check_rows(adapter, rows)
        records.append(n)
        reasons.update(rejected)

    for rows in CRASHED.get(adapter, []):
        fuzz = example(rows)(fuzz)
    fuzz()
    # the fuzzing reached both sides: rows that became records, and rejects beyond "not an object"
    assert sum(records) > 0 and sum(v for k, v in reasons.items() if k != "not_an_object") > 0, (records, reasons)
    print(f"{adapter}: {len(records)} files, {sum(records)} records, rejects {dict(reasons)}")
