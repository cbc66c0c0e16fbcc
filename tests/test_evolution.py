"""evolved_instructions (Evol-Instruct): the elimination rules on constructed cases, a garbage judge
answer counted as a failure, and the asset through Dagster: real generations on the embedded model
(every operation, accounting, Japanese templates, a cached re-run with zero model calls), and scripted
models for the rows (lineage, conversations, two rounds) and for a judge that answers garbage.

What the embedded model writes depends on the CPU's kernels (its evolutions are often all eliminated),
so the embedded run asserts accounting and caching only; the runs that need output rows, or a judge that
answers garbage, use a scripted generator and judge behind the `openai` backend (a loopback server,
tests/llm_servers.py: the same answers on any machine)."""

import json
from types import SimpleNamespace

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.common.sizing import full_sizes
from posttrain_assets.synthesis import evolution as E
from posttrain_assets.synthesis import tasks as T
from posttrain_assets.synthesis.assets import EvolConfig, evolved_instructions
from resources.llm import Completion, LLMCache, LLMError, LLMResource, ModelSpec, TaskParseError
from resources.llm.base import Backend
from resources.llm.session import LLMSession, TaskFailure
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import SAMPLE, mat_metadata, resources_for, upstream_specs
from .llm_servers import ChatHandler, serve

JA_PROMPT = "りんごが5個あります。2個食べると、残りは何個ですか？"
# the full-size defaults pinned (on the embedded engine they are the CPU sizes: common/sizing.py)
SMALL = {**full_sizes(EvolConfig), "evolve_max_tokens": 48, "judge_max_tokens": 48, "answer_max_tokens": 48, "chunk": 4}


# ------------------------------------------------------------------------------ the rules, constructed cases

@pytest.mark.parametrize("answer,language,expected", [
    ("I'm sorry, but I cannot help with that.", "en", True),
    ("Sorry. " + "Here is a long and complete explanation of the steps involved. " * 10, "en", False),  # 100+ words
    ("The answer is 42: add the two numbers and divide by two.", "en", False),  # no marker
    ("申し訳ありませんが、その質問にはお答えできません。", "ja", True),
    ("申し訳ありませんが、" + "この問題は次のように段階的に解くことができます。" * 10, "ja", False),  # 200+ characters
    ("残りは3個です。5から2を引きます。", "ja", False),
    # whitespace words do not measure Japanese: a 250-character refusal is one 'word' but not short
    ("できません" + "。理由を詳しく説明します" * 20, "ja", False),
])
def test_rule_2_short_refusal_counts_words_or_characters(answer, language, expected):
    assert E.is_short_refusal(answer, language, max_words=80, max_chars=200) is expected


def test_rule_2_lengths_are_language_aware():
    assert E.text_length("two words", "en") == 2
    assert E.text_length("申し訳 ありません", "ja") == 8  # characters, whitespace not counted
    assert len(("できません" + "。理由を詳しく説明します" * 20).split()) == 1  # what a word count would say


@pytest.mark.parametrize("text,language,expected", [
    ("", "en", True), ("...!?", "en", True), ("The, and of it. Is it?", "en", True),
    ("What is 2 + 3?", "en", False), ("Name the largest planet.", "en", False),
    ("の、は。です！", "ja", True), ("そして、それは。", "ja", True), ("残りは何個ですか？", "ja", False),
    ("「」、。", "ja", True),
])
def test_rule_3_only_punctuation_and_stop_words(text, language, expected):
    assert E.only_punctuation_and_stop_words(text, language) is expected


@pytest.mark.parametrize("text,hit", [
    ("#Rewritten Prompt#: How many clips did she sell?", "#Rewritten Prompt#"),
    ("Here is the rewritten prompt: how many clips?", "rewritten prompt"),
    ("As the GIVEN PROMPT says, ...", "given prompt"),
    ("＃与えられたプロンプト＃：りんごは何個？", "#与えられたプロンプト#"),  # full-width, NFKC
    ("書き換えたプロンプトは次の通りです。", "書き換えたプロンプト"),
    ("How many clips did Natalia sell in April and May together?", None),
])
def test_rule_4_template_words(text, hit):
    assert E.copied_template_words(text) == hit
    if hit:
        assert E.instruction_rule(text, "parent", "en")[0] == "template_words"


def test_rule_1_equality_verdict_and_identical_text():
    assert E.equality_outcome([{"equal": True, "reason": "same constraints"}])[0] == "equal"
    assert E.equality_outcome([{"equal": False, "reason": "adds a constraint"}])[0] == "not_equal"
    assert E.equality_outcome([TaskFailure("parse_failed", "no JSON object", raw="Equal")])[0] == "equal_judge_failed"
    assert E.instruction_rule("What  is 2+3?", "what is 2+3?", "en") == ("equal", "identical to its parent")
    assert E.instruction_rule("What is 2+3? Answer in words.", "What is 2+3?", "en") is None
    # the equality task's own parser: a real verdict validates, an off-schema one is a parse failure
    assert T.EQUAL.parse('{"equal": false, "reason": "deeper"}', {}) == {"equal": False, "reason": "deeper"}
    with pytest.raises(TaskParseError):
        T.EQUAL.parse('{"equal": "maybe"}', {})


def test_garbage_judge_answer_is_a_failure_never_an_acceptance():
    for garbage in ("Sure! The prompt looks great to me.", '{"accept": "yes"}', "{not json", ""):
        with pytest.raises(TaskParseError):
            T.JUDGE.parse(garbage, {})
    failure = TaskFailure("parse_failed", "no JSON object in the answer", raw="Sure!")
    assert E.judge_outcome([failure])[0] == "judge_failed"
    ok = {"accept": True, "natural": True, "clear_intent": True, "safe": True, "answerable": True, "reason": "ok"}
    assert E.judge_outcome([ok])[0] == "accepted"
    assert E.judge_outcome([{**ok, "safe": False}])[0] == "judge_rejected"  # accept contradicted by a criterion


def test_chain_and_seeded_depth_methods():
    assert E.parse_chain("width>depth>flatten") == ["width", "depth", "flatten"]
    with pytest.raises(ValueError, match="chain"):
        E.parse_chain(["width", "sideways"])
    draws = [E.depth_method(0, f"gsm8k:{i}", 1, 1) for i in range(40)]
    assert draws == [E.depth_method(0, f"gsm8k:{i}", 1, 1) for i in range(40)]  # seeded
    assert set(draws) == set(E.DEPTH_METHODS)  # all five are drawn
    assert draws != [E.depth_method(1, f"gsm8k:{i}", 1, 1) for i in range(40)]


def test_input_items_language_from_the_column_or_detected():
    dedup = pa.table({"all_prompt_id": ["a", "b", "c"], "source": ["s"] * 3, "language": ["ja", "en", "en"],
                      "prompt": [JA_PROMPT, "", "x" * 50]})
    items, dropped = E.input_items(dedup, "s", max_input_chars=40)
    assert [(i["id"], i["language"]) for i in items] == [("a", "ja")]
    assert sorted(d.reason for d in dropped) == ["empty_prompt", "prompt_too_long"]
    seeds = pa.table({"all_prompt_id": ["a", "b"], "source": ["s"] * 2, "prompt": [JA_PROMPT, "What is 2+3?"],
                      "answer": ["3", "5"], "solution": ["3", "5"]})
    assert [i["language"] for i in E.input_items(seeds, "s", 4000)[0]] == ["ja", "en"]


# ------------------------------------------------------------------------------ the driver with scripted models

class ScriptedBackend(Backend):
    """A deliberately scripted model (garbage verdicts and errors cannot be provoked from a real one)."""
    kind = "scripted"

    def __init__(self, judge="garbage", fail_answers=False, cut_width=False):
        self.judge, self.fail_answers, self.cut_width = judge, fail_answers, cut_width

    def settings(self):
        return {"backend": "scripted", "model": f"scripted-{self.judge}-{self.fail_answers}-{self.cut_width}"}

    def chat(self, batch, decoding, json_schema=None):
        out = []
        for msgs in batch:
            text = msgs[-1]["content"]
            if json_schema and "equal" in json_schema["properties"]:
                ans = '{"equal": false, "reason": "it adds a requirement"}'
            elif json_schema:
                ans = "Sure! The prompt looks great to me." if self.judge == "garbage" else json.dumps(
                    {"accept": True, "natural": True, "clear_intent": True, "safe": True, "answerable": True,
                     "reason": "fine"})
            elif msgs[0]["role"] == "system":  # the answer task
                if self.fail_answers:
                    out.append([LLMError("HTTP 500: boom")])
                    continue
                ans = "Twelve clips: 48 / 4 = 12."
            else:
                prompt = text.rsplit(":\n", 2)[-2].rsplit("\n", 1)[0]
                ans = f"{prompt} Explain each step."
                if self.cut_width and ("Prompt Creator" in text or "#作成したプロンプト#" in text):
                    out.append([Completion(ans[:20] + "\ufffd", 10, decoding.max_tokens, "length")])
                    continue
            out.append([Completion(ans, 10, 5, "stop")])
        return out

    def complete(self, prompts, decoding):
        raise NotImplementedError

    def avg_logprob(self, prompts, continuations):
        raise NotImplementedError

    def chat_prompt(self, messages):
        return json.dumps(messages)


CFG = SimpleNamespace(chain=["width", "depth", "flatten"], rounds=2, depth_methods=list(E.DEPTH_METHODS), seed=0,
                      evolve_temperature=0.7, evolve_max_tokens=48, judge_max_tokens=48, answer_temperature=0.0,
                      answer_max_tokens=48, refusal_max_words=80, refusal_max_chars=200)
ITEMS = [{"id": "s:1", "source": "s", "prompt": "Natalia sold 48 clips in April. How many in May?", "language": "en"},
         {"id": "s:2", "source": "s", "prompt": JA_PROMPT, "language": "ja"}]


def _session(tmp_path, **kw):
    return LLMSession(ScriptedBackend(**kw), ModelSpec(), LLMCache(str(tmp_path / "scripted.sqlite")))


def test_garbage_judge_through_the_session_is_counted_never_accepted(tmp_path):
    gen, judge = _session(tmp_path, judge="json"), _session(tmp_path, judge="garbage")
    res = E.run_evolution(ITEMS, gen, judge, CFG)
    assert res.table.num_rows == 0 and res.inputs_with_output == 0
    assert res.funnel["round"]["judged"] == 4 and res.funnel["round"]["judge_failed"] == 4
    assert res.funnel["round"]["accepted"] == 0 and judge.stats.parse_failures == 4
    assert [(i.reason, i.outcome) for i in res.issues] == [("judge_failed", "rejected")] * 2
    assert "no JSON object" in res.issues[0].detail


def test_generation_error_is_a_rejected_row_not_a_placeholder(tmp_path):
    gen, judge = _session(tmp_path, judge="json", fail_answers=True), _session(tmp_path, judge="json")
    res = E.run_evolution(ITEMS, gen, judge, CFG)
    assert res.table.num_rows == 0 and res.generation_errors == 4
    assert res.funnel["round"]["answer_failed"] == 4
    assert [(i.reason, i.outcome) for i in res.issues] == [("llm_failed", "rejected")] * 2
    assert "HTTP 500: boom" in res.issues[0].detail


def test_an_evolution_cut_at_max_tokens_is_eliminated_as_truncated(tmp_path):
    """A width step that stops at evolve_max_tokens (here inside a character) is never kept: counted
    under `truncated`, its parent goes on to depth and flatten."""
    gen, judge = _session(tmp_path, judge="json", cut_width=True), _session(tmp_path, judge="json")
    res = E.run_evolution(ITEMS, gen, judge, CFG)
    assert res.funnel["width"]["eliminated_truncated"] == 4 == res.eliminated["truncated"]
    assert res.funnel["width"]["survived"] == 0 and res.funnel["depth"]["in"] == 4
    assert all("\ufffd" not in r["input"] and not r["evolution_path"].startswith("width")
               for r in res.table.to_pylist())
    assert res.table.num_rows == 4 and res.funnel["round"]["answer_truncated"] == 0


def test_scripted_run_rows_lineage_and_round_two_builds_on_round_one(tmp_path):
    gen, judge = _session(tmp_path, judge="json"), _session(tmp_path, judge="json")
    res = E.run_evolution(ITEMS, gen, judge, CFG)
    rows = res.table.to_pylist()
    assert [r["id"] for r in rows] == ["s:1:evol:r1", "s:2:evol:r1", "s:1:evol:r2", "s:2:evol:r2"]
    r1, r2 = rows[0], rows[2]
    assert r1["evolution_path"].startswith("width>depth:") and r1["evolution_path"].endswith(">flatten")
    assert r2["evolution_path"].count("|") == 1 and r2["input"].startswith(r1["input"])  # evolved from round 1
    assert res.funnel["width"]["in"] == 4 and res.funnel["width"]["survived"] == 4
    assert json.loads(r1["template_versions"]) == {t: "1" for t in ("evol_answer", "evol_depth", "evol_equal",
                                                                     "evol_flatten", "evol_judge", "evol_width")}


# ------------------------------------------------------------------------------ through Dagster, embedded model

class _Scripted(ChatHandler):
    """A scripted generator and judge behind the OpenAI API, deterministic on any machine. JSON
    tasks (the request carries `response_format`): the equality judge says "not equal"; the judge
    accepts (`mode = "json"`) or answers garbage (`mode = "garbage"`). Evolutions: the given prompt
    with a sentence added. Answers (a system turn first): a fixed answer in the row's language."""
    mode = "json"

    def respond(self, body: dict) -> None:
        msgs = body["messages"]
        text = msgs[-1]["content"]
        if "response_format" in body and ("The First Prompt" in text or "一つ目の指示" in text):
            content = '{"equal": false, "reason": "the second adds a requirement"}'
        elif "response_format" in body:
            content = "Looks like a great prompt to me!" if _Scripted.mode == "garbage" else json.dumps(
                {"accept": True, "natural": True, "clear_intent": True, "safe": True, "answerable": True,
                 "reason": "clear and answerable"})
        elif msgs[0]["role"] == "system":  # the answer task
            content = "残りは3個です。" if "日本語" in msgs[0]["content"] else "She sold 72 clips in total."
        else:  # an evolution: "...#Given Prompt#:\n{prompt}\n#Created Prompt#:\n" (or the ja markers)
            prompt = text.rsplit(":\n", 2)[-2].rsplit("\n", 1)[0]
            content = prompt + ("各手順も説明してください。" if "プロンプト" in text else " Explain each step.")
        self.answer(content, 10, 10)


@pytest.fixture(scope="module")
def scripted_server():
    with serve(_Scripted) as url:
        yield url


def _scripted_llm(cache_dir: str, url: str, judge: str) -> LLMResource:
    return LLMResource(cache_dir=cache_dir, models={
        "generator": ModelSpec(backend="openai", model="scripted-generator", base_url=url),
        "judge": ModelSpec(backend="openai", model=judge, base_url=url)})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One answer cache for the module's runs (the same evolution requests are asked once)."""
    return str(tmp_path_factory.mktemp("llm_cache"))


@pytest.fixture
def seeds_root(tmp_path):
    """selected_seeds for 'gsm8k': two real GSM8K questions and one Japanese question."""
    root = str(tmp_path / "storage")
    rows = [json.loads(line) for line in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:2]]
    table = pa.table({
        "all_prompt_id": ["gsm8k:0", "gsm8k:1", "gsm8k:ja"], "source": ["gsm8k"] * 3,
        "prompt": [r["question"] for r in rows] + [JA_PROMPT],
        "answer": [r["answer"].split("####")[-1].strip() for r in rows] + ["3"],
        "solution": [r["answer"] for r in rows] + ["5 - 2 = 3\n#### 3"]})
    store = ParquetStore(root)
    store.write(table, store.path("selected_seeds", "gsm8k"))
    return root


def evolve(instance, root, cache_dir, config, llm=None):
    if "gsm8k" not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", ["gsm8k"])
    resources = resources_for(root, BUNDLED_REGISTRY)
    resources["llm"] = llm or LLMResource(cache_dir=cache_dir)
    result = dg.materialize(upstream_specs("selected_seeds", "deduplicated_prompts") + [evolved_instructions],
                            selection=[evolved_instructions], partition_key="gsm8k", instance=instance,
                            resources=resources, run_config={"ops": {"evolved_instructions": {"config": config}}})
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return mat_metadata(result, "evolved_instructions"), checks


def _read(root, name="evolved_instructions"):
    return pq.read_table(f"{root}/{name}/source=gsm8k/data.parquet")


def _balanced(md, rejects):
    assert md["rows_in"] == 3 and md["rows_in"] == md["rows_out"] + md["removed"] + md["rejected"]
    assert rejects.num_rows == md["removed"] + md["rejected"]


def test_every_operation_on_the_embedded_model_and_a_cached_rerun(seeds_root, cache_dir, instance):
    config = {**SMALL, "rounds": 1}
    md, checks = evolve(instance, seeds_root, cache_dir, config)
    assert checks == {"row_accounting": True, "id_unique": True}
    funnel = md["funnel_json"]
    for op in ("width", "depth", "flatten"):  # every operation really ran on every lineage
        f = funnel[op]
        assert f["in"] == 3 and f["evolved"] + f["failed"] == 3
        assert f["evolved"] == sum(v for k, v in f.items() if k.startswith("eliminated_")) + f["survived"]
    assert funnel["round"]["judged"] == funnel["round"]["candidates"]
    assert md["llm_calls"] > 0 and md["llm_tokens_out"] > 0 and md["llm_failures"] == 0
    assert sum(md["depth_methods"].values()) == 3
    # Japanese templates rendered for the Japanese row (the messages the session sent)
    sent = md["messages_sent"]
    assert "evol_width/ja" in sent and "#与えられたプロンプト#" in sent and "evol_width/en" in sent
    rejects = pq.read_table(f"{seeds_root}/_rejects/evolved_instructions/source=gsm8k/data.parquet")
    _balanced(md, rejects)
    first = _read(seeds_root)
    again, checks = evolve(instance, seeds_root, cache_dir, config)  # unchanged: every answer from the cache
    assert again["llm_calls"] == 0 and again["llm_cache_hits"] == md["llm_requests"] and checks["row_accounting"]
    assert _read(seeds_root).equals(first) and again["funnel_json"] == funnel


def test_rows_lineage_and_japanese_conversation_with_scripted_models(seeds_root, cache_dir, scripted_server, instance):
    """Two rounds with a scripted generator and judge (the loopback server: the same answers on any
    machine; the embedded model's evolutions are often all eliminated, so its rows cannot be relied
    on): every lineage survives both rounds, and each row's structure, lineage and conversation."""
    _Scripted.mode = "json"
    llm = _scripted_llm(cache_dir, scripted_server, "scripted-judge")
    md, checks = evolve(instance, seeds_root, cache_dir, {**SMALL, "rounds": 2}, llm)
    assert checks == {"row_accounting": True, "id_unique": True}
    table = _read(seeds_root)
    assert table.schema.equals(E.OUTPUT_SCHEMA) and table.num_rows == md["output_rows"] == 6  # 3 inputs x 2 rounds
    assert md["rows_out"] == md["inputs_with_output"] == len(set(table["parent_id"].to_pylist())) == 3
    assert md["funnel_json"]["round"]["judged"] == md["funnel_json"]["round"]["accepted"] == 6
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"gsm8k:{i}:evol:r{k}" for i in ("0", "1", "ja") for k in (1, 2))
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        assert r["parent_id"] in {"gsm8k:0", "gsm8k:1", "gsm8k:ja"} and r["id"] == f"{r['parent_id']}:evol:r{r['round']}"
        assert [m["from"] for m in r["conversation"]] == ["system", "human", "gpt"]
        assert r["conversation"][1]["value"] == r["input"] and r["conversation"][2]["value"] == r["output"]
        assert r["input"] != r["seed_prompt"] and r["input"].startswith(r["seed_prompt"]) and r["output"]
        steps = [s for rnd in r["evolution_path"].split("|") for s in rnd.split(">")]
        assert len(r["evolution_path"].split("|")) == r["round"]
        assert all(s in ("width", "flatten") or s.split(":")[1] in E.DEPTH_METHODS for s in steps)
        assert r["generator_model"] == "openai:scripted-generator" and r["judge_model"] == "openai:scripted-judge"
        assert json.loads(r["judge_verdict"])["accept"] is True
        assert {"evol_judge", "evol_answer"} <= set(json.loads(r["template_versions"]))
        if r["round"] == 2:  # round two evolves round one's prompt
            assert r["input"].startswith(by_id[f"{r['parent_id']}:evol:r1"]["input"])
        system = r["conversation"][0]["value"]
        if r["language"] == "ja":
            assert r["parent_id"] == "gsm8k:ja"
            assert system == "あなたは優秀な日本語AIアシスタントです。ユーザーの質問に対して正確かつ簡潔に回答します。"
        else:
            assert r["language"] == "en" and system == T.system_prompt("en") and system.startswith("You are")
    assert md["acceptance_by_language_json"]["en"]["inputs"] == 2
    assert md["acceptance_by_language_json"]["ja"]["inputs"] == 1
    rejects = pq.read_table(f"{seeds_root}/_rejects/evolved_instructions/source=gsm8k/data.parquet")
    _balanced(md, rejects)
    assert rejects.num_rows == 0


def test_garbage_judge_through_dagster_is_counted_as_failures(seeds_root, cache_dir, scripted_server, instance):
    """The scripted generator's 3 evolutions all reach the judge, which answers garbage: 3 parse
    failures, 3 rejected rows, never an acceptance."""
    _Scripted.mode = "garbage"
    try:
        md, checks = evolve(instance, seeds_root, cache_dir, {**SMALL, "rounds": 1},
                            _scripted_llm(cache_dir, scripted_server, "garbage-judge"))
    finally:
        _Scripted.mode = "json"
    assert checks["row_accounting"] and md["output_rows"] == 0 and md["rows_out"] == 0
    funnel = md["funnel_json"]
    assert funnel["round"]["judged"] == funnel["round"]["judge_failed"] == 3 and funnel["round"]["accepted"] == 0
    assert md["llm_parse_failures"] == 3
    assert md["rejected_by_reason"] == {"judge_failed": 3} and md["removed"] == 0


def test_empty_input_gives_an_empty_table_with_the_schema_and_no_model(tmp_path, instance):
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    empty = pa.table({"all_prompt_id": pa.array([], pa.string()), "source": pa.array([], pa.string()),
                      "language": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
    store.write(empty, store.path("deduplicated_prompts", "gsm8k"))
    md, checks = evolve(instance, root, str(tmp_path / "cache"), {"input_asset": "deduplicated_prompts"})
    assert checks["row_accounting"] and md["rows_in"] == 0 and "llm_calls" not in md
    assert _read(root).schema.equals(E.OUTPUT_SCHEMA) and _read(root).num_rows == 0
