"""Decontamination: benchmark items planted in real training rows are found in every language (exact,
with a changed number, inside a longer prompt, reformatted, Japanese with and without spaces,
Chinese), near misses (a benchmark's template with other content) are not, the export leaves the
contaminated rows out and the report's blocking check stops it over the share."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.decontamination.assets import benchmark_index, contamination, contamination_report
from posttrain_assets.decontamination.benchmarks import load_all, load_benchmarks
from posttrain_assets.decontamination.contamination import CheckSettings, check_records, report
from posttrain_assets.decontamination.ngrams import (Matcher, fired, index_rows, is_cjk, normalize, render,
                                                     semantic_candidates, tokenize)
from posttrain_assets.export.assets import hf_parquet
from posttrain_assets.records.unify import COT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA
from resources.storage import ParquetStore

from .helpers import mat_metadata, resources_for, step_error, upstream_specs, write_registry

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "posttrain_assets" / "sample_data"
USER_BENCHMARKS = REPO / "tests" / "data" / "benchmarks" / "registry.yaml"
GSM8K_TEST = [json.loads(x) for x in (SAMPLE / "benchmarks/gsm8k_test/test.jsonl").read_text().splitlines()]
JA = {r["id"]: r for r in map(json.loads, (REPO / "tests/data/benchmarks/ja_qa.jsonl").read_text().splitlines())}
ZH = {r["id"]: r for r in map(json.loads, (REPO / "tests/data/benchmarks/zh_qa.jsonl").read_text().splitlines())}
# real training rows that hold no benchmark item: GSM8K train, the Alpaca seed tasks, Japanese OASST
GSM8K_TRAIN = [json.loads(x)["question"] for x in (SAMPLE / "gsm8k/train_300.jsonl").read_text().splitlines()]
ALPACA = json.loads((SAMPLE / "alpaca_seed_tasks/seed_tasks_alpaca_40.json").read_text())
OASST_JA = [m["text_ja"] for m in json.loads((SAMPLE / "oasst2_ja_edited/edited_data_flat.json").read_text()).values()
            if m.get("text_ja")]
#: a benchmark whose items share a template (Dolly's classification questions): its content is X, Y
TEMPLATE = [{"benchmark": "instruments", "item_id": f"t{i}", "language": "en", "question": q, "answer": None,
             "match_text": q, "choices": None, "row": i}
            for i, q in enumerate(["Which of these is a string or percussion instrument: Cuica, Ukulele",
                                   "Which of these is a string or percussion instrument: Tabla, Sitar",
                                   "Which of these is a string or percussion instrument: Bongo, Cello"])]


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    """The bundled benchmarks, the user's ja / zh ones and the template benchmark, indexed as the asset does."""
    specs = load_benchmarks() + load_benchmarks(USER_BENCHMARKS)
    items = pa.concat_tables([load_all(specs), pa.Table.from_pylist(TEMPLATE, schema=load_all(specs).schema)])
    table, stats = index_rows(items, 8, 8, {s.key for s in specs if s.answer_match})
    assert stats["items"] == {"gsm8k_test": 1319, "math500": 500, "humaneval": 164, "ifeval": 541, "mt_bench_en": 80,
                              "ja_qa": 6, "zh_qa": 6, "instruments": 3}
    return Matcher(table)


def _hits(matcher, prompts, responses=None, rule="coverage"):
    return [[(m.benchmark, m.item_id, m.field) for m in ms if fired(m, rule, 0.5)]
            for ms in matcher.match(prompts, responses)]


def test_tokens_by_script_not_by_spaces():
    assert tokenize("Ｘ＝３，ｙ　ＩＳ　Ｆｕｌｌ－Ｗｉｄｔｈ") == ["x", "3", "y", "is", "full", "width"]
    assert tokenize("日本の首都は 東京 です。") == list("日本の首都は東京です")  # one token per character
    assert tokenize("ＧＰＴは2023年に") == ["gpt", "は", "2023", "年", "に"]  # NFKC: half-width letters, digits
    assert tokenize("小明有24本书") == ["小", "明", "有", "24", "本", "书"]
    assert normalize("ＡＢＣ ｶﾀｶﾅ") == "abc カタカナ"
    assert is_cjk(tokenize("花子さんは毎朝パンを三個焼きます")) and not is_cjk(tokenize("Natalia sold clips"))
    assert render(["natalia", "sold", "48", "個", "の", "clips"]) == "natalia sold 48個のclips"


def test_planted_copies_of_real_benchmark_items_are_found(matcher):
    q = GSM8K_TEST[0]["question"]  # Janet's ducks
    ifeval = json.loads((SAMPLE / "benchmarks/ifeval/input_data.jsonl").read_text().splitlines()[0])["prompt"]
    before = ALPACA[0]["instruction"]  # a real instruction before the planted item
    cases = {
        "exact": q,
        "changed_number": q.replace("16", "17"),
        "embedded": f"{before}\n\nAlso, here is a question for you: {q} Please answer it.",
        "reformatted": "\n".join(q.upper().split()).replace("3", "３").replace("4", "４"),
        "ifeval_exact": ifeval,
    }
    got = dict(zip(cases, _hits(matcher, list(cases.values()))))
    assert got == {"exact": [("gsm8k_test", "0", "prompt")], "changed_number": [("gsm8k_test", "0", "prompt")],
                   "embedded": [("gsm8k_test", "0", "prompt")], "reformatted": [("gsm8k_test", "0", "prompt")],
                   "ifeval_exact": [("ifeval", "1000", "prompt")]}
    best = matcher.match([cases["changed_number"]])[0][0]
    assert 0.5 < best.coverage < 1 and best.span  # the changed token breaks some n-grams only


def test_japanese_with_and_without_spaces_and_chinese(matcher):
    ja = JA["ja-003"]["question"]  # 花子さんは毎朝パンを三個焼きます。…
    spaced = " ".join(ja)  # a space between every character
    edited = ja.replace("パン", "おにぎり")
    zh = ZH["zh-002"]["question"]
    got = _hits(matcher, [ja, spaced, edited, zh, "在宅勤務" + ja[:10]])
    assert got[:4] == [[("ja_qa", "ja-003", "prompt")]] * 3 + [[("zh_qa", "zh-002", "prompt")]]
    assert got[4] == []  # ten characters of the item: far from half of it


def test_a_response_holding_the_reference_answer_is_found(matcher):
    gsm = GSM8K_TEST[5]
    got = _hits(matcher, ["Solve the word problem below."], [f"Sure! {gsm['answer']}"])
    assert got == [[("gsm8k_test", "5", "response")]]
    # MATH-500's answers are too short to tell a copy from a coincidence: not matched (answer_match false)
    math = json.loads((SAMPLE / "benchmarks/math500/test_problems.jsonl").read_text().splitlines()[0])
    assert _hits(matcher, ["x"], [math["answer"]]) == [[]]


def test_near_misses_do_not_fire(matcher):
    near = ["Which of these is a string or percussion instrument: Drum, Guitar",
            "Which of these is a string or percussion instrument: Conga, Violin"]
    assert _hits(matcher, near) == [[], []]
    # Tulu 3's own rule counts the template: a near miss fires there (why `coverage` is the default)
    assert _hits(matcher, near, rule="tulu") == [[("instruments", "t0", "prompt"), ("instruments", "t1", "prompt"),
                                                 ("instruments", "t2", "prompt")]] * 2
    # open-r1's rule (one shared 8-gram) fires on it as well
    assert all(_hits(matcher, near, rule="any_ngram"))
    # the template with another item's content is that item
    assert _hits(matcher, ["Which of these is a string or percussion instrument: Tabla, Sitar?"]) == [
        [("instruments", "t1", "prompt")]]


def test_real_training_rows_hold_no_benchmark_item(matcher):
    rows = GSM8K_TRAIN + [a["instruction"] for a in ALPACA] + OASST_JA
    assert len(rows) == 300 + 40 + len(OASST_JA) and len(OASST_JA) >= 20
    flagged = {i: h for i, h in enumerate(_hits(matcher, rows)) if h}
    # one: GSM8K train's Bella-stamps problem is test item 632 (Max's stamps) with other names and numbers,
    # the train/test near-duplicate family: 62.5% of its distinctive tokens lie in shared 8-grams (> 50%)
    assert flagged == {20: [("gsm8k_test", "632", "prompt")]}
    assert GSM8K_TRAIN[20].startswith("Bella bought stamps") and GSM8K_TEST[632]["question"].startswith("Max bought")
    assert matcher.match([GSM8K_TRAIN[20]])[0][0].coverage == 0.625
    # their responses neither hold a reference answer
    responses = [a["output"] for a in ALPACA]
    assert [h for h in _hits(matcher, [""] * len(responses), responses) if h] == []


def test_check_records_accounts_every_record_and_reports_per_benchmark(matcher):
    q = GSM8K_TEST[3]["question"]
    sft = pa.Table.from_pylist([
        {"all_prompt_id": "s:0", "source": "s", "prompt": q, "answer": "x", "metadata": "{}", "messages": None},
        {"all_prompt_id": "s:1", "source": "s", "prompt": "Write a haiku.", "answer": "ok", "metadata": "{}",
         "messages": [{"role": "user", "content": JA["ja-001"]["question"]}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "b"}]},
        {"all_prompt_id": "s:2", "source": "s", "prompt": GSM8K_TRAIN[0], "answer": "y", "metadata": "{}",
         "messages": None}], schema=SFT_SCHEMA)
    res = check_records({"sft_records": sft, "cot_records": COT_SCHEMA.empty_table(),
                         "preference_records": PREFERENCE_SCHEMA.empty_table()}, matcher, CheckSettings())
    assert res.rows_in == res.table.num_rows == 3
    assert res.table["contaminated"].to_pylist() == [True, True, False]  # s:1: an earlier user turn
    assert res.table["item_id"].to_pylist() == ["3", "ja-001", None]
    assert res.by_benchmark == {"gsm8k_test": {"rows": 1, "items": 1}, "ja_qa": {"rows": 1, "items": 1}}
    rep = report(res.table, {"gsm8k_test": 1319, "ja_qa": 6}, max_share=0.02)
    assert rep.select(["source", "benchmark", "items_matched", "share", "over_threshold"]).to_pylist() == [
        {"source": "s", "benchmark": "gsm8k_test", "items_matched": 1, "share": round(1 / 1319, 6),
         "over_threshold": False},
        {"source": "s", "benchmark": "ja_qa", "items_matched": 1, "share": round(1 / 6, 6), "over_threshold": True}]
    assert rep["examples"][0].as_py()[0]["all_prompt_id"] == "s:0"


def test_semantic_candidates_are_a_separate_signal():
    items = np.eye(3, dtype=np.float32)
    rows = np.asarray([[0.9, 0.1, 0.0], [0.5, 0.5, 0.7]], np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert semantic_candidates(rows, items, 0.9) == [(0, round(float(rows[0, 0]), 4)), None]
    # near two items at once (a problem on their topic): no candidate with a margin
    both = np.asarray([[0.75, 0.66, 0.0]], np.float32) / np.linalg.norm([0.75, 0.66, 0.0])
    assert semantic_candidates(both, items, 0.7) == [(0, round(float(both[0, 0]), 4))]
    assert semantic_candidates(both, items, 0.7, margin=0.15) == [None]


def test_a_translated_item_is_a_semantic_candidate_not_an_ngram_match(tmp_path, instance):
    """The embedder (the default multilingual USE) sees a Japanese rendering of a GSM8K test problem;
    the n-gram rule cannot (no shared n-gram) and does not fire."""
    en = GSM8K_TEST[0]["question"]
    ja = ("ジャネットのアヒルは1日に16個の卵を産みます。彼女は毎朝3個を朝食に食べ、毎日4個を使って友人のためにマフィンを"
          "焼きます。残りは毎日ファーマーズマーケットで1個2ドルで売ります。彼女は毎日ファーマーズマーケットで何ドル稼ぎますか？")
    root = tmp_path / "storage"
    reg = write_registry(tmp_path / "bench.yaml", [])
    bench = tmp_path / "benchmarks.yaml"
    (tmp_path / "one.jsonl").write_text(json.dumps({"question": en, "answer": GSM8K_TEST[0]["answer"]}) + "\n"
                                        + json.dumps({"question": GSM8K_TEST[1]["question"], "answer": "x"}) + "\n")
    bench.write_text("version: 1\nbenchmarks:\n  - {key: gsm, path: one.jsonl, language: en, licence: MIT, "
                     "fields: {question: question, answer: answer}}\n")
    from posttrain_assets.dedup.assets import prompt_embeddings

    _write_records(root, "s", [ja, "What is the capital of France?"])
    resources = resources_for(str(root), reg)
    idx = dg.materialize([benchmark_index], instance=instance, resources=resources,
                         run_config={"ops": {"benchmark_index": {"config": {"benchmarks_path": str(bench)}}}})
    assert idx.success and mat_metadata(idx, "benchmark_index")["items_total"] == 2
    _with_partition(instance, "s")
    run = dg.materialize([prompt_embeddings, contamination, *upstream_specs(
        "merged_prompts", "sft_records", "cot_records", "preference_records"), dg.AssetSpec("benchmark_index")],
        selection=[prompt_embeddings, contamination], partition_key="s", instance=instance, resources=resources)
    assert run.success, step_error(run)
    out = pq.read_table(root / "contamination" / "source=s" / "data.parquet").to_pylist()
    assert [r["contaminated"] for r in out] == [False, False]
    assert [(r["semantic_benchmark"], r["semantic_item_id"]) for r in out] == [("gsm", "0"), (None, None)]
    assert out[0]["semantic_similarity"] >= mat_metadata(run, "contamination")["semantic_threshold"]


def _with_partition(instance, key):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    return instance


def _write_records(root: Path, key: str, prompts: list[str], cot: list[str] = ()) -> None:
    store = ParquetStore(str(root))
    rows = [{"all_prompt_id": f"{key}:{i}", "source_prompt_id": str(i), "prompt": p, "answer": "a", "metadata": "{}",
             "source": key, "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "a"}]}
            for i, p in enumerate(prompts)]
    store.write(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), store.path("sft_records", key))
    cots = [{"all_prompt_id": f"{key}:c{i}", "source_prompt_id": str(i), "prompt": p, "thinking": "t", "answer": "1",
             "metadata": "{}", "source": key, "split_rule": "gsm8k"} for i, p in enumerate(cot)]
    store.write(pa.Table.from_pylist(cots, schema=COT_SCHEMA), store.path("cot_records", key))
    store.write(PREFERENCE_SCHEMA.empty_table(), store.path("preference_records", key))
    store.write(pa.table({"prompt": prompts, "messages": [None] * len(prompts),
                          "all_prompt_id": [f"{key}:{i}" for i in range(len(prompts))]}),
                store.path("merged_prompts", key))


def _graph(tmp_path, instance, sources: dict[str, tuple[list[str], list[str]]]):
    """benchmark_index (n-grams only), then each source's contamination, over records the test wrote."""
    root = tmp_path / "storage"
    reg = write_registry(tmp_path / "sources.yaml", [
        {"key": k, "kind": "sft", "adapter": "generic", "fields": {"prompt": "p"}, "licence": "MIT",
         "loader": {"path": str(tmp_path / "x.jsonl")}} for k in sources])
    resources = resources_for(str(root), reg)
    assert dg.materialize([benchmark_index], instance=instance, resources=resources,
                          run_config={"ops": {"benchmark_index": {"config": {"semantic": False}}}}).success
    store = ParquetStore(str(root))
    for key, (prompts, cot) in sources.items():
        _write_records(root, key, prompts, cot)
        store.write(pa.table({"all_prompt_id": pa.array([], pa.string()),
                              "embedding": pa.array([], pa.list_(pa.float32(), 4)),
                              "representable": pa.array([], pa.bool_()),
                              "model": pa.array([], pa.dictionary(pa.int32(), pa.string()))}),
                    store.path("prompt_embeddings", key))
        _with_partition(instance, key)
        run = dg.materialize([contamination, *upstream_specs("sft_records", "cot_records", "preference_records",
                                                             "prompt_embeddings"), dg.AssetSpec("benchmark_index")],
                             selection=[contamination], partition_key=key, instance=instance, resources=resources)
        assert run.success, step_error(run)
    return resources


def _export(instance, resources, run_config=None):
    return dg.materialize([contamination_report, hf_parquet, dg.AssetSpec("benchmark_index"), *upstream_specs(
        "contamination", "sft_records", "cot_records", "preference_records")],
        selection=[contamination_report, hf_parquet], instance=instance, resources=resources,
        run_config=run_config, raise_on_error=False)


def test_the_export_leaves_contaminated_rows_out_and_the_report_stops_it_over_the_share(tmp_path, instance):
    gsm = [r["question"] for r in GSM8K_TEST[:30]]  # 30 of 1319 items: 2.27% > 2%
    resources = _graph(tmp_path, instance, {"clean": (GSM8K_TRAIN[:5], []),
                                            "leaky": (["Tell me a joke.", gsm[0]], gsm[1:30])})
    blocked = _export(instance, resources)
    assert not blocked.success
    (check,) = [e for e in blocked.get_asset_check_evaluations() if e.check_name == "benchmark_share"]
    assert not check.passed and check.description == (
        "source 'leaky' holds 30 of 1319 items of 'gsm8k_test' (2.27% > 2.00%)")
    assert [e.asset_key.to_user_string() for e in blocked.get_asset_materialization_events()] == [
        "contamination_report"]  # the blocking check: no export
    report_md = mat_metadata(blocked, "contamination_report")["report"]
    assert "| leaky | gsm8k_test | 30/1319 | 2.27% | 30 | **yes** |" in report_md

    allowed = _export(instance, resources, {"ops": {"contamination_report": {"config": {
        "allow_over_threshold": ["leaky"]}}}})
    assert allowed.success, step_error(allowed)
    md = mat_metadata(allowed, "hf_parquet")
    assert (md["rows_sft"], md["rows_cot"], md["contaminated_left_out"]) == (6, 0, 30)
    assert md["contaminated_by_config"] == {"sft": {"gsm8k_test": 1}, "cot": {"gsm8k_test": 29}}
    root = Path(resources["storage"].root)
    rejects = pq.read_table(root / "_rejects" / "hf_parquet" / "data.parquet").to_pylist()
    assert len(rejects) == 30 and {r["reason"] for r in rejects} == {"contaminated"}
    assert rejects[0]["duplicate_of"] == "gsm8k_test:0" and rejects[0]["detail"].startswith("leaky:1: benchmark")
    card = (root / "hf_export" / "README.md").read_text()
    assert "## Decontamination" in card and "| cot | gsm8k_test | 29 |" in card and "gsm8k_test (1319 items, en)" in card
    kept = _export(instance, resources, {"ops": {
        "contamination_report": {"config": {"allow_over_threshold": ["*"]}},
        "hf_parquet": {"config": {"leave_out_contaminated": False}}}})
    assert mat_metadata(kept, "hf_parquet")["rows_cot"] == 29


def test_a_bad_benchmark_fails_the_index_naming_it(tmp_path, instance):
    bench = tmp_path / "b.yaml"
    (tmp_path / "b.jsonl").write_text('{"q": "fine"}\n{"text": "no q"}\n')
    bench.write_text("version: 1\nbenchmarks:\n  - {key: mine, path: b.jsonl, language: en, licence: MIT, "
                     "fields: {question: q}}\n")
    res = dg.materialize([benchmark_index], instance=instance, raise_on_error=False,
                         resources=resources_for(str(tmp_path / "s"), write_registry(tmp_path / "r.yaml", [])),
                         run_config={"ops": {"benchmark_index": {"config": {"benchmarks_path": str(bench)}}}})
    assert not res.success
    assert step_error(res).startswith(f"benchmark 'mine' (file {tmp_path / 'b.jsonl'}), row 1, field 'question'")
