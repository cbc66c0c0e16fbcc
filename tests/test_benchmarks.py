"""The benchmarks registry (posttrain_assets/decontamination/benchmarks.py): the bundled evaluation
sets load with their exact rows, a user's own Japanese / Chinese sets load from their registry, and
every bad registry entry or benchmark item fails with a message naming the file, benchmark, row and
field. Cheap: no model, no Dagster."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from posttrain_assets.decontamination.benchmarks import (BUNDLED, ITEMS_SCHEMA, BenchmarkError, load_all,
                                                         load_benchmarks, load_items, parse_benchmarks)

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "posttrain_assets" / "sample_data" / "benchmarks"
OWN = REPO / "tests" / "data" / "benchmarks"
COUNTS = {"gsm8k_test": 1319, "math500": 500, "humaneval": 164, "ifeval": 541, "mt_bench_en": 80}


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def bundled():
    specs = load_benchmarks(BUNDLED)
    return specs, load_all(specs)


def _item(table: pa.Table, bench: str, row: int) -> dict:
    hits = [r for r in table.to_pylist() if r["benchmark"] == bench and r["row"] == row]
    assert len(hits) == 1
    return hits[0]


def test_bundled_registry_loads_the_five_benchmarks(bundled):
    specs, table = bundled
    assert [s.key for s in specs] == list(COUNTS)
    assert table.schema == ITEMS_SCHEMA
    counts = {k: 0 for k in COUNTS}
    for key in table.column("benchmark").to_pylist():
        counts[key] += 1
    assert counts == COUNTS
    for spec in specs:  # every bundled file is in the package, beside its LICENSE and SOURCE.md
        assert spec.path.is_relative_to(BENCH) and (spec.path.parent / "LICENSE").is_file()
        assert (spec.path.parent / "SOURCE.md").is_file() and spec.licence in ("MIT", "Apache-2.0")
    by_key = {s.key: s for s in specs}
    assert by_key["humaneval"].language == "code"
    assert {s.key for s in specs if s.answer_match} == {"gsm8k_test", "humaneval"}
    assert all(s.match == ("question",) for s in specs)
    assert len({*specs, *load_benchmarks(BUNDLED)}) == 5  # hashable, equal when parsed twice
    ids = {}
    for key, item_id in zip(table.column("benchmark").to_pylist(), table.column("item_id").to_pylist()):
        ids.setdefault(key, set()).add(item_id)
    assert {k: len(v) for k, v in ids.items()} == COUNTS  # unique within each benchmark


def test_bundled_items_are_the_files_rows(bundled):
    _, table = bundled
    gsm = _jsonl(BENCH / "gsm8k_test" / "test.jsonl")[17]
    item = _item(table, "gsm8k_test", 17)
    assert (item["item_id"], item["question"], item["answer"]) == ("17", gsm["question"], gsm["answer"])
    assert item["match_text"] == gsm["question"] and item["choices"] is None and item["language"] == "en"

    math = _jsonl(BENCH / "math500" / "test_problems.jsonl")[42]
    item = _item(table, "math500", 42)
    assert (item["item_id"], item["question"], item["answer"]) == (math["unique_id"], math["problem"], math["answer"])

    he = _jsonl(BENCH / "humaneval" / "HumanEval.jsonl.gz")[5]
    item = _item(table, "humaneval", 5)
    assert (item["item_id"], item["question"], item["answer"]) == (he["task_id"], he["prompt"], he["canonical_solution"])
    assert item["item_id"] == "HumanEval/5" and item["language"] == "code"

    ife = _jsonl(BENCH / "ifeval" / "input_data.jsonl")[3]
    item = _item(table, "ifeval", 3)
    assert (item["item_id"], item["question"], item["answer"]) == (str(ife["key"]), ife["prompt"], None)

    mt = _jsonl(BENCH / "mt_bench_en" / "question.jsonl")[10]
    item = _item(table, "mt_bench_en", 10)
    assert len(mt["turns"]) == 2 and item["item_id"] == str(mt["question_id"])
    assert item["question"] == mt["turns"][0] + "\n" + mt["turns"][1] == item["match_text"]


def test_a_users_japanese_and_chinese_benchmarks(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_BENCHMARKS", str(OWN / "registry.yaml"))
    specs = load_benchmarks()  # the default path follows $POSTTRAIN_BENCHMARKS
    assert [(s.key, s.language, s.match, s.answer_match) for s in specs] == [
        ("ja_qa", "ja", ("question", "choices"), True), ("zh_qa", "zh", ("question", "choices"), True)]
    table = load_all(specs)
    assert table.num_rows == 12
    rows = {r["item_id"]: r for r in table.to_pylist()}
    ja = _jsonl(OWN / "ja_qa.jsonl")
    zh = _jsonl(OWN / "zh_qa.jsonl")
    open_ja, mc_ja, mc_zh = rows["ja-001"], rows["ja-004"], rows["zh-004"]
    assert (open_ja["question"], open_ja["answer"], open_ja["choices"]) == (ja[0]["question"], ja[0]["answer"], None)
    assert open_ja["match_text"] == ja[0]["question"] and open_ja["language"] == "ja"
    assert mc_ja["choices"] == "\n".join(ja[3]["choices"]) and mc_ja["answer"] == ja[3]["answer"]
    assert mc_ja["match_text"] == ja[3]["question"] + "\n" + "\n".join(ja[3]["choices"])
    assert (mc_zh["question"], mc_zh["language"], mc_zh["row"]) == (zh[3]["question"], "zh", 3)


# --------------------------------------------------------------------------- formats and field paths


def _registry(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "benchmarks": list(entries)}, allow_unicode=True), encoding="utf-8")
    return path


def _entry(path: str, **over) -> dict:
    return {"key": "mine", "path": path, "language": "en", "fields": {"question": "q"}, "licence": "CC0-1.0", **over}


def _one(tmp_path: Path, name: str, content: str | bytes, **over) -> pa.Table:
    f = tmp_path / name
    f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content, encoding="utf-8")
    return load_items(load_benchmarks(_registry(tmp_path, _entry(name, **over)))[0])


def test_formats_nested_fields_numeric_ids_and_limit(tmp_path):
    rows = [{"meta": {"id": 7}, "q": "What is two plus two?", "opts": {"text": ["3", 4]}, "a": 4},
            {"meta": {"id": 8.0}, "q": ["first turn", "second turn"], "opts": {"text": []}, "a": None}]
    fields = {"id": "meta.id", "question": "q", "choices": "opts.text", "answer": "a"}
    t = _one(tmp_path, "b.json", json.dumps(rows), fields=fields)
    assert t.to_pylist() == [
        {"benchmark": "mine", "item_id": "7", "language": "en", "question": "What is two plus two?",
         "choices": "3\n4", "answer": "4", "match_text": "What is two plus two?\n3\n4", "row": 0},
        {"benchmark": "mine", "item_id": "8", "language": "en", "question": "first turn\nsecond turn",
         "choices": None, "answer": None, "match_text": "first turn\nsecond turn", "row": 1}]
    pq.write_table(pa.Table.from_pylist([{"id": 1, "q": "alpha"}, {"id": 2, "q": "beta"}]), tmp_path / "b.parquet")
    t = load_items(load_benchmarks(_registry(tmp_path, _entry("b.parquet", fields={"id": "id", "question": "q"},
                                                               limit=1)))[0])
    assert t.column("item_id").to_pylist() == ["1"] and t.column("question").to_pylist() == ["alpha"]
    t = _one(tmp_path, "b.csv", "q,a\nWhich river?,Nile\n\"Two\nlines\",\n", fields={"question": "q", "answer": "a"},
             match=["question", "answer"])
    assert t.select(["item_id", "question", "answer", "match_text"]).to_pylist() == [
        {"item_id": "0", "question": "Which river?", "answer": "Nile", "match_text": "Which river?\nNile"},
        {"item_id": "1", "question": "Two\nlines", "answer": None, "match_text": "Two\nlines"}]
    t = _one(tmp_path, "b.jsonl.gz", gzip.compress(b'{"q": "x"}\n\n{"q": "y"}\n'))
    assert t.column("row").to_pylist() == [0, 2]  # the line number: blank lines count


def test_multi_language_benchmark_reads_each_items_language(tmp_path):
    t = _one(tmp_path, "m.jsonl", '{"q": "hello", "l": "en"}\n{"q": "こんにちは", "l": "ja"}\n',
             language="multi", fields={"question": "q", "language": "l"})
    assert t.column("language").to_pylist() == ["en", "ja"]


# --------------------------------------------------------------------------- registry errors


@pytest.mark.parametrize("over, field, message", [
    ({"kind": "qa"}, "kind", "unknown field; allowed: key, path, language, fields, match, answer_match, licence, "
                             "license, source, limit"),
    ({"fields": {"answer": "a"}}, "fields.question", "required: the column holding the benchmark's question"),
    ({"language": "jp"}, "language", "unknown language 'jp'; allowed: en, ja, zh, ko, fr, de, es, ru, code, multi"),
    ({"fields": {"question": "q", "prompt": "p"}}, "fields.prompt",
     "unknown role 'prompt'; roles: id, question, choices, answer, language"),
    ({"match": ["answer"]}, "match", "role 'answer' is not declared in fields"),
    ({"answer_match": True}, "answer_match", "true, but no 'answer' role in fields"),
    ({"licence": " "}, "licence", "required (the benchmark's licence, e.g. MIT; 'unknown' for your own "
                                  "unpublished set)"),
    ({"fields": {"question": "q", "language": "l"}}, "fields.language",
     "a per-item language column needs language: multi (this benchmark is 'en')"),
])
def test_registry_entry_errors(tmp_path, over, field, message):
    (tmp_path / "b.jsonl").write_text('{"q": "x"}\n')
    reg = _registry(tmp_path, _entry("b.jsonl", **over))
    with pytest.raises(BenchmarkError) as exc:
        load_benchmarks(reg)
    assert str(exc.value) == f"{reg}: benchmark 'mine': field '{field}': {message}"


def test_registry_key_path_and_duplicate_errors(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"q": "x"}\n')
    reg = _registry(tmp_path, _entry("b.jsonl", key="My Bench"))
    with pytest.raises(BenchmarkError) as exc:
        load_benchmarks(reg)
    assert str(exc.value) == (f"{reg}: benchmark 'My Bench': field 'key': must match ^[a-z0-9][a-z0-9_.-]*$ "
                              "(lowercase letters, digits, '_', '.', '-'), got 'My Bench'")
    reg = _registry(tmp_path, _entry("b.jsonl"), _entry("b.jsonl"))
    with pytest.raises(BenchmarkError) as exc:
        load_benchmarks(reg)
    assert str(exc.value) == f"{reg}: benchmark 'mine': field 'key': duplicate benchmark key"
    reg = _registry(tmp_path, _entry("evals/missing.jsonl"))
    with pytest.raises(BenchmarkError) as exc:
        load_benchmarks(reg)
    assert str(exc.value) == (f"{reg}: benchmark 'mine': field 'path': file not found: "
                              f"{tmp_path.resolve() / 'evals' / 'missing.jsonl'}")
    with pytest.raises(BenchmarkError) as exc:
        parse_benchmarks({"version": 1, "benchmarks": [_entry("b.txt")]}, str(reg))
    assert str(exc.value) == (f"{reg}: benchmark 'mine': field 'path': unsupported file type 'b.txt'; one of "
                              ".jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv, .csv.gz")
    with pytest.raises(BenchmarkError) as exc:
        load_benchmarks(tmp_path / "nope.yaml")
    assert str(exc.value) == f"{tmp_path / 'nope.yaml'}: benchmarks registry not found (set POSTTRAIN_BENCHMARKS?)"
    specs = load_benchmarks(_registry(tmp_path, _entry("b.jsonl")))
    with pytest.raises(BenchmarkError) as exc:
        load_all(specs + specs)
    assert str(exc.value) == f"benchmark 'mine': duplicate key (files {specs[0].path} and {specs[0].path})"


# --------------------------------------------------------------------------- item errors: fail, never skip


@pytest.mark.parametrize("name, content, over, where, message", [
    ("b.jsonl", '{"q": "x"}\n{"question": "y"}\n', {}, "row 1, field 'question'", "column 'q' missing in this row"),
    ("b.jsonl", '{"q": "x"}\n{"q": null}\n', {}, "row 1, field 'question'",
     "null or empty: every benchmark item needs its question"),
    ("b.jsonl", '{"q": "x"}\n{"q": "  "}\n', {}, "row 1, field 'question'",
     "null or empty: every benchmark item needs its question"),
    ("b.jsonl", '{"q": 12}\n', {}, "row 0, field 'question'", "text expected, got int 12"),
    ("b.jsonl", '{"q": "x", "a": {"v": 1}}\n', {"fields": {"question": "q", "answer": "a"}}, "row 0, field 'answer'",
     "text expected, got dict {'v': 1}"),
    ("b.jsonl", '{"q": "x", "c": ["A", {"t": "B"}]}\n', {"fields": {"question": "q", "choices": "c"}},
     "row 0, field 'choices'", "a list of texts expected, it holds dict {'t': 'B'}"),
    ("b.jsonl", '{"q": "x", "i": "a"}\n{"q": "y", "i": "a"}\n', {"fields": {"question": "q", "id": "i"}},
     "row 1, field 'id'", "duplicate item id 'a' (first at row 0)"),
    ("b.jsonl", '{"q": "x"}\n{"q": "y"\n', {}, "row 1", "not valid JSON (column 10): Expecting ',' delimiter"),
    ("b.jsonl", '["q"]\n', {}, "row 0", "not an object (a mapping of columns), got list"),
    ("b.json", '{"q": "x"}', {}, None, "a .json benchmark must hold a list of objects, got dict"),
    ("b.jsonl", "\n\n", {}, None, "no rows: an empty benchmark checks nothing"),
    ("m.jsonl", '{"q": "x", "l": "jp"}\n', {"language": "multi", "fields": {"question": "q", "language": "l"}},
     "row 0, field 'language'", "unknown language 'jp'; allowed: en, ja, zh, ko, fr, de, es, ru, code"),
])
def test_item_errors_name_benchmark_file_row_and_field(tmp_path, name, content, over, where, message):
    with pytest.raises(BenchmarkError) as exc:
        _one(tmp_path, name, content, **over)
    head = f"benchmark 'mine' (file {tmp_path.resolve() / name})"
    assert str(exc.value) == (f"{head}, {where}: {message}" if where else f"{head}: {message}")


def test_a_truncated_gzip_names_the_file_and_row(tmp_path):
    lines = "".join(json.dumps({"q": f"question number {i} " + "x" * 200}) + "\n" for i in range(400))
    whole = gzip.compress(lines.encode())
    with pytest.raises(BenchmarkError) as exc:
        _one(tmp_path, "b.jsonl.gz", whole[: len(whole) - 40])
    message = str(exc.value)
    head = f"benchmark 'mine' (file {(tmp_path / 'b.jsonl.gz').resolve()}), row "
    assert message.startswith(head) and "cannot read the file (truncated or corrupt?): Compressed file ended" in message
    row = int(message[len(head):].split(":")[0])
    assert 300 < row <= 400  # the line the reader reached, not a silent stop
