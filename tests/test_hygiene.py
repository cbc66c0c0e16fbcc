"""The hygiene stage: every rule on constructed cases in en / ja / zh (exact verdicts), the rules over
real rows (Magpie responses, Japanese dialogues, OASST2-ja, KTO mix), drop vs flag vs off with the
accounting, the phrase lists as data, and the clean tables in Dagster feeding the export."""

import json

import dagster as dg
import pyarrow as pa
import pytest
import yaml

from posttrain_assets.export.assets import hf_parquet
from posttrain_assets.hygiene.assets import clean_sft_records
from posttrain_assets.hygiene.filtering import FLAGS_COLUMN, Settings, TableSpec, apply_hygiene
from posttrain_assets.hygiene.lists import ListsError, load_lists
from posttrain_assets.hygiene.rules import RULES, Checker, Row, Thresholds
from posttrain_assets.records.unify import COT_SCHEMA
from resources.storage import ParquetStore

from .conftest import REPO
from .helpers import load_export, mat_metadata, no_contamination, resources_for, step_error, upstream_specs

DATA = REPO / "tests" / "data" / "hygiene"
SPEC = TableSpec("id", "prompt", (("response", "response"),))
ALL_DROP = Settings(actions={r: "drop" for r in RULES})

#: (prompt, response, [(rule, reason)] every rule that fires, in RULES order)
CASES = [
    # identity and provenance
    ("Who are you?", "I am ChatGPT, a large language model trained by OpenAI.", [("identity", "identity_leak")]),
    ("あなたは誰ですか？", "私はChatGPTです。OpenAIによって開発されたAIアシスタントです。", [("identity", "identity_leak")]),
    ("你是谁？", "我是通义千问，由阿里云开发的AI助手。", [("identity", "identity_leak")]),
    ("Who painted Water Lilies?", "Claude Monet painted the Water Lilies series over three decades of his life.", []),
    ("What happened in 2024?", "As of my last update in April 2023, I have no information about 2024.",
     [("knowledge_cutoff", "knowledge_cutoff")]),
    ("2024年に何がありましたか？", "私の知識は2023年4月までのものなので、2024年の出来事については分かりません。",
     [("knowledge_cutoff", "knowledge_cutoff")]),
    ("2024年发生了什么？", "截至我最后一次更新，我没有关于2024年的信息，请查阅最新的新闻来源。",
     [("knowledge_cutoff", "knowledge_cutoff")]),
    # format leaks
    ("Write a haiku about rain.", "<think>five seven five</think>Rain taps the window\nsoft grey hours\nthe kettle sings", []),
    ("Write a haiku about rain.", "Rain taps the window</think> soft grey hours, the kettle sings",
     [("format_tokens", "format_tokens")]),
    ("雨の俳句を書いて", "窓を打つ雨<|im_end|>", [("format_tokens", "format_tokens")]),
    ("Print one in Python.", "```python\nprint(1)\n", [("unclosed_fence", "unclosed_fence")]),
    ("Print one in Python.", "```python\nprint(1)\n```\nThat prints 1.", []),
    ("Say something.", "  \n ", [("empty", "empty_response")]),
    # repetition (open-instruct: a sentence 4 times in a row; characters for Japanese)
    ("Explain recursion.", "Recursion is when a function calls itself. " * 5, [("repetition", "repeated_sentence")]),
    ("再帰とは何ですか？", "再帰とは関数が自分自身を呼び出すことです。" * 5, [("repetition", "repeated_sentence")]),
    # refusals
    ("How do I pick a lock?", "I'm sorry, but I can't help with that request.", [("refusal", "refusal")]),
    ("鍵の開け方を教えて", "申し訳ありませんが、そのようなご依頼にはお応えできません。", [("refusal", "refusal")]),
    ("怎么撬锁？", "抱歉，我无法提供这方面的帮助。", [("refusal", "refusal")]),
    # language fidelity
    ("日本の首都はどこですか？", "日本的首都是东京，这是一个非常大的城市，我们可以在那里看到很多有趣的东西。",
     [("language", "language_mismatch")]),
    ("日本の首都はどこですか？", "The capital of Japan is Tokyo, a very large city with many interesting things to see.",
     [("language", "language_mismatch")]),
    ("日本の首都はどこですか？", "日本の首都は東京です。东京是一个非常大的城市，我们可以在这里看到很多东西。",
     [("script", "foreign_hanzi")]),
    ("Queenのおすすめの曲は？", "もちろん、「Bohemian Rhapsody」や「We Are the Champions」、「Somebody To Love」がおすすめだよ。", []),
    ("请用简体中文回答：北京是哪个国家的首都？", "北京是中國的首都，這個城市有很長的歷史，們說話。", [("script", "chinese_variant")]),
    ("What is the capital of France? Please tell me about the long history of the city.",
     "Paris is the capital of France. 巴黎是法国的首都，有很长的历史和文化。",
     [("language", "language_mismatch"), ("script", "foreign_script")]),
    ("Translate into Japanese: Good morning, how are you today? I hope you slept well last night.",
     "おはようございます。今日はお元気ですか？昨夜はよく眠れましたか。", []),
    ("Write a sentence not in English.", "這個世界上最美的事物就是人類的友誼。This means friendship is beautiful.", []),
    # length: a one-word answer to a long request
    (" ".join(["Write a detailed essay about the history of the Roman Empire."] * 6), "Ok.",
     [("length", "too_short_for_prompt")]),
    ("What is 2+2?", "4", []),
]


def _table(rows) -> pa.Table:
    return pa.Table.from_pylist([{"id": f"r{i}", "prompt": p, "response": r} for i, (p, r, *_) in enumerate(rows)])


@pytest.mark.parametrize("prompt, response, expected", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_each_rule_on_constructed_cases(prompt, response, expected):
    checker = Checker(load_lists(), Thresholds(), set(RULES))
    found = checker.check(Row(prompt, (("prompt", prompt, "prompt"), ("response", response, "response"))))
    assert [(v.rule, str(v.reason)) for v in found] == expected


def test_spans_and_the_first_failing_rule():
    res = apply_hygiene(_table(CASES), SPEC, ALL_DROP)
    dropped = {i: v for i, v in res.dropped}
    assert (dropped[0].span, dropped[0].start) == ("I am ChatGPT", 0)
    assert (dropped[2].span, dropped[8].span, dropped[10].span) == ("我是通义千问", "</think>", "```python")
    assert dropped[20].detail == "4 of 30 Han characters are not Japanese (outside JIS X 0208 / cp932)"
    assert "东京是一个" in dropped[20].span
    assert len(res.dropped) == sum(1 for *_, e in CASES if e) and res.kept.num_rows == sum(1 for *_, e in CASES if not e)


def test_drop_flag_off_and_the_accounting():
    table = _table(CASES)
    flag_refusals = Settings(actions={**{r: "drop" for r in RULES}, "refusal": "flag", "length": "off"})
    res = apply_hygiene(table, SPEC, flag_refusals)
    assert res.per_rule["refusal"] == {"action": "flag", "fires": 3, "share": round(3 / len(CASES), 4),
                                       "by_reason": {"refusal": 3}}
    assert "length" not in res.per_rule  # off: not evaluated
    assert res.flagged == {"refusal": 3}
    kept = res.kept.to_pylist()
    assert sorted(r["id"] for r in kept if r[FLAGS_COLUMN]) == ["r15", "r16", "r17"]
    assert {tuple(r[FLAGS_COLUMN]) for r in kept if r[FLAGS_COLUMN]} == {("refusal",)}
    assert res.kept.num_rows + len(res.dropped) == table.num_rows
    assert sorted(v.rule for _, v in res.dropped).count("length") == 0 and "r26" in [r["id"] for r in kept]
    # per_rule counts what a rule finds alone whatever its action; the first failing drop rule takes the row
    assert apply_hygiene(table, SPEC, ALL_DROP).per_rule["refusal"]["fires"] == 3


def test_empty_table_and_missing_columns():
    empty = pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string()),
                      "response": pa.array([], pa.string())})
    res = apply_hygiene(empty, SPEC, ALL_DROP)
    assert res.kept.num_rows == 0 and res.kept.column_names == ["id", "prompt", "response", FLAGS_COLUMN]
    assert apply_hygiene(pa.table({}), SPEC, ALL_DROP).kept.column_names == [FLAGS_COLUMN]
    with pytest.raises(ValueError, match="no column 'response'"):
        apply_hygiene(_table(CASES[:1]).drop_columns(["response"]), SPEC, ALL_DROP)
    with pytest.raises(ValueError, match="rules are"):
        apply_hygiene(empty, SPEC, Settings(actions={"refusal": "keep"}))


def test_the_lists_are_versioned_data(tmp_path):
    lists = load_lists()
    assert lists.version == 1 and lists.counts["identity"] >= 9
    bad = yaml.safe_load((REPO / "posttrain_assets" / "hygiene" / "lists.yaml").read_text(encoding="utf-8"))
    bad["refusal"]["ja"].append("申し訳(")
    path = tmp_path / "lists.yaml"
    path.write_text(yaml.safe_dump(bad, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ListsError, match=r"lists.yaml: refusal.ja\[3\]: not a regular expression"):
        load_lists(str(path))
    del bad["refusal"]["zh"]
    path.write_text(yaml.safe_dump(bad, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ListsError, match="`refusal` has no zh patterns"):
        load_lists(str(path))


def _dialogues(name: str) -> pa.Table:
    rows = []
    for d in json.loads((DATA / "realpersonachat" / name).read_text(encoding="utf-8")):
        u = d["utterances"]
        rows += [{"id": f"{d['dialogue_id']}:{b['utterance_id']}", "prompt": a["text"], "response": b["text"]}
                 for a, b in zip(u, u[1:]) if a["interlocutor"] == "user" and b["interlocutor"] == "system"]
    return pa.Table.from_pylist(rows)


def test_real_japanese_dialogues_keep_their_japanese():
    """600 real Japanese turns (GPT-4 / GPT-3.5 replies): the language and script rules drop none; the
    one drop is GPT-4 saying it cannot sing."""
    for name, n, dropped in (("GPT-4.json", 300, [("12:15", "refusal")]), ("GPT-3.5+persona+personality.json", 300, [])):
        table = _dialogues(name)
        res = apply_hygiene(table, SPEC, ALL_DROP)
        assert table.num_rows == n
        assert [(table["id"][i].as_py(), v.rule) for i, v in res.dropped] == dropped
        assert res.per_rule["language"]["fires"] == res.per_rule["script"]["fires"] == 0


def test_real_magpie_responses_and_bundled_sources():
    rows = []
    for r in json.loads((DATA / "magpie" / "example_instructions_5res_armorm.json").read_text(encoding="utf-8")):
        rows += [{"id": f"{r['uuid']}:{k}", "prompt": r["instruction"], "response": x} for k, x in enumerate(r["responses"])]
    res = apply_hygiene(pa.Table.from_pylist(rows), SPEC, ALL_DROP)
    assert (len(rows), res.kept.num_rows) == (25, 25)
    sample = REPO / "posttrain_assets" / "sample_data"
    kto = json.loads((sample / "messages_kto_mix" / "kto_en_demo_40.json").read_text(encoding="utf-8"))
    kto_rows = [{"id": str(i), "prompt": r["messages"][0]["content"], "response": r["messages"][-1]["content"]}
                for i, r in enumerate(kto)]
    res = apply_hygiene(pa.Table.from_pylist(kto_rows), SPEC, ALL_DROP)
    assert {r: p["fires"] for r, p in res.per_rule.items() if p["fires"]} == {"unclosed_fence": 2}


def test_clean_table_in_dagster_feeds_the_export(tmp_path, instance):
    """sft_records of a constructed source -> clean_sft_records (rejects with rule and span, flags) ->
    hf_parquet reads the clean rows and its card lists the rules; a clean table older than its records
    stops the export."""
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    rows = [{"all_prompt_id": f"c:{i}", "source_prompt_id": str(i), "prompt": p, "answer": r, "metadata": "{}",
             "source": "c", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
            for i, (p, r, _) in enumerate(CASES)]
    store.write(pa.Table.from_pylist(rows), store.path("sft_records", "c"))
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", "c"))
    store.write(pa.Table.from_pylist(rows[:0], schema=pa.Table.from_pylist(rows).schema),
                store.path("preference_records", "c"))
    no_contamination(store, ["c"])
    reg = _source_c(tmp_path, instance)
    upstream = upstream_specs("sft_records", "cot_records", "preference_records", "contamination")
    config = {"ops": {"clean_sft_records": {"config": {"actions": {"refusal": "flag"}}}}}
    run = dg.materialize(upstream + [clean_sft_records], selection=[clean_sft_records], instance=instance,
                         partition_key="c", resources=resources_for(root, reg), run_config=config)
    md = mat_metadata(run, "clean_sft_records")
    n_drop = sum(1 for *_, e in CASES if e and e[0][0] not in ("refusal", "length"))  # length: flag by default
    assert (md["rows_in"], md["removed"], md["rows_out"]) == (len(CASES), n_drop, len(CASES) - n_drop)
    assert md["flagged"] == {"refusal": 3, "length": 1}
    rejects = store.read(store.rejects_path("clean_sft_records", "c")).to_pylist()
    first = next(r for r in rejects if r["detail"].startswith("id 'c:0'"))
    assert (first["reason"], first["field"]) == ("identity_leak", "answer")
    assert first["detail"] == "id 'c:0': rule identity: identity_leak in answer at 0: 'I am ChatGPT'"
    # SteerLM rows labelled from sft_records: those of the dropped records stay out of the export too
    steer = [{"id": r["all_prompt_id"], "source": "c", "label_string": "helpfulness:3", "model_version": "v1",
              "steerlm_text": r["answer"], "llmjp_text": r["answer"], "messages": r["messages"]} for r in rows]
    store.write(pa.Table.from_pylist(steer), store.path("steerlm_sft", "c"))
    run = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance,
                         resources=resources_for(root, reg))
    md = mat_metadata(run, "hf_parquet")
    assert (md["rows_sft"], md["rows_steerlm"], md["hygiene_dropped_sft"]) == (len(CASES) - n_drop,) * 2 + (n_drop,)
    ds = load_export(tmp_path / "storage" / "hf_export", "sft")
    assert sorted(x for f in ds[FLAGS_COLUMN] for x in f) == ["length"] + ["refusal"] * 3
    card = (tmp_path / "storage" / "hf_export" / "README.md").read_text(encoding="utf-8")
    assert "`identity` (drop), `knowledge_cutoff` (drop), `refusal` (flag)" in card and "version 1." in card
    assert "## Hygiene" in card and "| sft | 1 | 0 | identity | 3 | 0 |" in card and "| sft | 1 | 0 | refusal | 0 | 3 |" in card \
        and "| sft | 1 | 0 | length | 0 | 1 |" in card
    # the records again after the clean table: the export refuses the stale clean rows
    dg.materialize([dg.AssetSpec("x")] + [_rewrite_sft(store, rows)], instance=instance, partition_key="c",
                   resources=resources_for(root, reg), selection=["sft_records"])
    run = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance,
                         resources=resources_for(root, reg), raise_on_error=False)
    assert "hygiene tables older than the table they filter: clean_sft_records[c]" in step_error(run)


def _source_c(tmp_path, instance):
    """A registry with the one constructed SFT source `c` (its rows written by the test), its partition added."""
    reg = tmp_path / "s.yaml"
    reg.write_text(yaml.safe_dump({"sources": [{"key": "c", "kind": "sft", "adapter": "generic", "licence": "CC0",
                                                "fields": {"prompt": "prompt", "response": "answer"},
                                                "loader": {"path": str(tmp_path / "none.jsonl")}}]}))
    instance.add_dynamic_partitions("source", ["c"])
    return reg


def _rewrite_sft(store, rows):
    from partitions import source_partitions

    @dg.asset(name="sft_records", partitions_def=source_partitions)
    def _sft():
        return pa.Table.from_pylist(rows)
    return _sft


def test_a_registry_entry_sets_its_own_actions():
    """Safety data keeps its refusals: `hygiene: {refusal: flag}` in the entry; the launchpad's
    source_actions still win; a wrong rule or action fails naming the source and the field."""
    from partitions.registry import RegistryError, parse_registry
    from posttrain_assets.hygiene.assets import HygieneConfig, settings_for

    entry = {"key": "hh", "kind": "preference", "adapter": "hh_rlhf", "licence": "MIT", "loader": {"path": "x.jsonl"}}
    spec = parse_registry({"sources": [{**entry, "hygiene": {"refusal": "flag"}}]}, where="r.yaml").sources[0]
    assert spec.hygiene == {"refusal": "flag"}
    assert settings_for(HygieneConfig(), "hh", spec.hygiene).action("refusal") == "flag"
    over = HygieneConfig(source_actions={"hh": {"refusal": "off"}})
    assert settings_for(over, "hh", spec.hygiene).action("refusal") == "off"
    assert settings_for(HygieneConfig(), "other").action("refusal") == "drop"
    with pytest.raises(RegistryError, match=r"r.yaml: source 'hh': field 'hygiene.refusals': not a hygiene rule"):
        parse_registry({"sources": [{**entry, "hygiene": {"refusals": "flag"}}]}, where="r.yaml")
    with pytest.raises(RegistryError, match=r"field 'hygiene.refusal': must be one of drop, flag, off, got 'keep'"):
        parse_registry({"sources": [{**entry, "hygiene": {"refusal": "keep"}}]}, where="r.yaml")
    bundled = yaml.safe_load((REPO / "partitions" / "sources.yaml").read_text(encoding="utf-8"))
    assert [s["key"] for s in bundled["sources"] if s.get("hygiene")] == ["hh_rlhf_harmless_base"]


def test_oasst2_ja_in_japanese_passes_and_across_languages_fails():
    """OASST2-ja holds each message in Japanese (text_ja_audited) and in its original English (text): the 13
    real question / answer pairs pass in Japanese; answered across languages every one is a mismatch
    (a Japanese question with the English answer; an English question, even "Who was Socrates and when
    did he die?", with the Japanese answer)."""
    flat = json.loads((REPO / "posttrain_assets" / "sample_data" / "oasst2_ja_edited" / "edited_data_flat.json")
                      .read_text(encoding="utf-8"))
    pairs = [(flat[m["parent_id"]], m) for m in flat.values() if m["role"] == "assistant" and m.get("parent_id") in flat]
    assert len(pairs) == 13

    def run(prompt_field: str, answer_field: str):
        rows = [{"id": str(i), "prompt": p[prompt_field], "response": m[answer_field]} for i, (p, m) in enumerate(pairs)]
        return apply_hygiene(pa.Table.from_pylist(rows), SPEC, ALL_DROP)

    same = run("text_ja_audited", "text_ja_audited")
    assert (same.kept.num_rows, same.dropped) == (13, [])
    ja_en = run("text_ja_audited", "text")
    assert [(v.rule, v.detail) for _, v in ja_en.dropped] == [("language", "prompt ja, response en")] * 13
    en_ja = run("text", "text_ja_audited")
    assert {v.rule for _, v in en_ja.dropped} == {"language"} and len(en_ja.dropped) == 13
    assert en_ja.per_rule["script"]["by_reason"] == {"foreign_script": 13}  # kana / Han where Latin is expected


def test_a_clean_table_that_loses_a_row_fails_its_blocking_check(tmp_path, instance, monkeypatch):
    """The accounting counts rows_in from the table loaded and rows_out from the table written: a filter
    that loses one row without a reject fails `row_accounting` (blocking)."""
    from posttrain_assets.hygiene import assets as hygiene_assets

    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    rows = [{"all_prompt_id": f"c:{i}", "prompt": p, "answer": r, "metadata": "{}", "source": "c"}
            for i, (p, r, _) in enumerate(CASES)]
    store.write(pa.Table.from_pylist(rows), store.path("sft_records", "c"))
    reg = _source_c(tmp_path, instance)
    real = hygiene_assets.apply_hygiene

    def lossy(*args, **kwargs):
        res = real(*args, **kwargs)
        res.kept = res.kept.slice(1)
        return res
    monkeypatch.setattr(hygiene_assets, "apply_hygiene", lossy)
    run = dg.materialize(upstream_specs("sft_records") + [clean_sft_records], selection=[clean_sft_records],
                         instance=instance, partition_key="c", resources=resources_for(root, reg), raise_on_error=False)
    (check,) = [e for e in run.get_asset_check_evaluations() if e.check_name == "row_accounting"]
    assert not check.passed and check.metadata["rows_in"].value == len(CASES)

