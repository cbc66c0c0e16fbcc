"""One synthesis operation end to end over the `openai` backend against a real OpenAI-compatible
server: `transformers serve` on loopback with the bundled SmolLM2 weights (fp32, the same folder
the `transformers` backend loads), driven by `generated_solutions` materialised with Dagster, the
generator and the judge both `ModelSpec(backend="openai", ...)`.

What is checked, exactly: greedy solutions equal the transformers backend's on the same task rows
(same weights, one request at a time on both sides); the judge's answers equal the transformers
backend's *unconstrained* answers (the server ignores `response_format`, which the backend sends
and the server logs as unsupported), and each is either a parsed verdict or a counted parse failure,
never an acceptance; lineage and accounting of the tables; the server's own request count; a cached
re-run sends the server nothing."""

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA
from posttrain_assets.synthesis.assets import generated_solutions
from posttrain_assets.synthesis.solutions import (JUDGE_ANSWER, PASS_RATES_SCHEMA, SOLUTIONS_SCHEMA, generate,
                                                  judge_rows, problems_from_seeds)
from resources.llm import LLMCache, LLMResource, ModelSpec, TaskParseError
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import SAMPLE, mat_metadata, resources_for, transformers_serve, upstream_specs
from .llm_servers import counting_proxy

GEN_TOKENS, JUDGE_TOKENS = 32, 32
# max_judge_failure_rate 1.0: the 135M judge's unparseable deciding verdicts are counted rejects, not a
# failed partition
CONFIG = {"n": 1, "temperature": 0.0, "max_tokens": GEN_TOKENS, "judge_max_tokens": JUDGE_TOKENS,
          "judge_math": True, "keep": "all", "chunk": 2, "max_judge_failure_rate": 1.0}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """`transformers serve` on loopback with the bundled SmolLM2 weights (as in test_llm) behind a
    counting proxy (tests/llm_servers.py: the requests the server was sent, counted exactly), plus its
    log. One torch thread (as the in-process reference below): on a shared 2-core machine two threads
    per process contend (about 3x slower per token, measured), and both sides then compute alike."""
    with transformers_serve(tmp_path_factory.mktemp("serve"), env={"OMP_NUM_THREADS": "1"}) as (url, folder, log):
        with counting_proxy(url) as (proxy_url, hits):
            yield proxy_url, folder, log, hits


def _seeds() -> pa.Table:
    """Two real GSM8K questions (math: math-verify decides, the judge is asked too with judge_math)
    and one free-form question (the judge decides)."""
    gsm = [json.loads(x) for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:2]]
    rows = [{"all_prompt_id": f"gsm8k:{i}", "source": "gsm8k", "prompt": r["question"],
             "answer": r["answer"].split("####")[-1].strip(), "solution": r["answer"]} for i, r in enumerate(gsm)]
    rows.append({"all_prompt_id": "free:0", "source": "gsm8k", "prompt": "What is the capital of France? Answer in one sentence.",
                 "answer": "Paris is the capital of France.", "solution": "Paris is the capital of France."})
    return pa.Table.from_pylist(rows)


def _materialize(instance, root, llm):
    if "gsm8k" not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", ["gsm8k"])
    res = resources_for(root, BUNDLED_REGISTRY)
    res["llm"] = llm
    result = dg.materialize(upstream_specs("selected_seeds", "cot_records", "sft_records") + [generated_solutions],
                            selection=[generated_solutions], partition_key="gsm8k", instance=instance, resources=res,
                            run_config={"ops": {"generated_solutions": {"config": CONFIG}}})
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    return mat_metadata(result, "generated_solutions"), checks


def _read(root, name):
    return pq.read_table(f"{root}/{name}/source=gsm8k/data.parquet")


def test_generated_solutions_over_the_openai_backend_against_transformers_serve(served_model, tmp_path, instance):
    url, folder, log_path, hits = served_model
    root, cache_dir = str(tmp_path / "storage"), str(tmp_path / "cache")
    seeds = _seeds()
    store = ParquetStore(root)
    store.write(seeds, store.path("selected_seeds", "gsm8k"))
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", "gsm8k"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "gsm8k"))
    served = ModelSpec(backend="openai", model=folder, base_url=url)
    llm = LLMResource(models={"generator": served, "judge": served}, cache_dir=cache_dir)

    before = hits[CHAT]
    md, checks = _materialize(instance, root, llm)
    sent = hits[CHAT] - before
    assert len(checks) == 3 and all(checks.values()), checks

    # requests: 3 problems x n=1 solutions + 3 verdicts (judge_math: every generated answer is judged);
    # the server handled exactly the calls the sessions counted, none failed, none retried
    by_role = md["llm_by_role"]
    assert (by_role["generator"]["llm_calls"], by_role["judge"]["llm_calls"]) == (3, 3)
    assert md["llm_calls"] == md["llm_requests"] == sent == 6
    assert md["llm_failures"] == 0 and md["llm_cache_hits"] == 0
    assert md["llm_model"] == f"openai:{folder}"
    # the backend sent response_format; the server took the request and ignored the field (no 400, so
    # no request was sent twice): the verdicts come back unconstrained and are parsed tolerantly
    assert "Ignoring unsupported fields in the request: {'response_format'}" in Path(log_path).read_text()

    sols, rates = _read(root, "generated_solutions"), _read(root, "solution_pass_rates")
    rejects = _read(root, "_rejects/generated_solutions")
    assert sols.schema.equals(SOLUTIONS_SCHEMA) and rates.schema.equals(PASS_RATES_SCHEMA)

    # the reference: the same task rows through the transformers backend (same fp32 weights), greedy;
    # and what the asset got, replayed from its cache through openai sessions (no request sent)
    problems = problems_from_seeds(seeds)
    assert [p["kind"] for p in problems] == ["math", "math", "free"]
    cache = LLMCache(f"{cache_dir}/llm_cache.sqlite")
    ref_llm = LLMResource(models={"tf": ModelSpec(backend="transformers", model=folder)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ref_llm.session(None, "tf", cache=LLMCache(str(tmp_path / "ref.sqlite"))) as tf:
            ref = generate(problems, tf, n=1, temperature=0.0, max_tokens=GEN_TOKENS, seed=0, max_input_chars=4000)
        gen = llm.session(None, "generator", cache=cache)
        got = generate(problems, gen, n=1, temperature=0.0, max_tokens=GEN_TOKENS, seed=0, max_input_chars=4000)
        assert (gen.stats.calls, gen.stats.cache_hits) == (0, 3)
        # greedy: the server's solutions are the transformers backend's, token for token
        assert [(x.text, x.final_answer, x.math_verify, x.finish_reason) for x in got] == \
               [(x.text, x.final_answer, x.math_verify, x.finish_reason) for x in ref]
        # token counts: the server counts the end-of-sequence token of a stopped answer, the local
        # engine does not (one token apart on 'stop', equal on 'length'); which answers stop within
        # GEN_TOKENS depends on what the model writes on this CPU
        assert {x.finish_reason for x in got} <= {"length", "stop"}
        assert [x.tokens_out - y.tokens_out for x, y in zip(got, ref)] == [int(x.finish_reason == "stop") for x in got]
        assert all(x.tokens_out == GEN_TOKENS for x in got if x.finish_reason == "length")

        judge_msgs = [JUDGE_ANSWER.render(r) for r in judge_rows(got, 2000)]
        jdg = llm.session(None, "judge", cache=cache)
        got_verdicts = [a[0].text for a in jdg.chat(judge_msgs, task=JUDGE_ANSWER, n=1, max_tokens=JUDGE_TOKENS)]
        assert (jdg.stats.calls, jdg.stats.cache_hits) == (0, 3)
        ref_verdicts = [a[0].text for a in ref_llm.backend("tf").chat(
            judge_msgs, jdg.decoding(JUDGE_ANSWER, n=1, max_tokens=JUDGE_TOKENS), json_schema=None)]
    finally:
        torch.set_num_threads(threads)
        ref_llm.close()
        cache.close()
    assert hits[CHAT] - before == 6
    # the judge's raw answers are the transformers backend's unconstrained (not '{'-prefilled) answers
    assert got_verdicts == ref_verdicts

    # every verdict: parsed (and recorded) or a counted parse failure; never an acceptance without one
    parsed = {}
    for x, text in zip(got, got_verdicts):
        try:
            parsed[x.problem["id"]] = JUDGE_ANSWER.parse(text, {})
        except TaskParseError:
            parsed[x.problem["id"]] = None
    failures = sum(v is None for v in parsed.values())
    # which verdicts parse depends on what the 135M judge writes on this CPU: both outcomes are checked below
    assert md["judge_failures"] == by_role["judge"]["llm_parse_failures"] == failures

    rows = {r["all_prompt_id"]: r for r in sols.to_pylist()}
    rejected = {r["detail"].split(" sample ")[0]: r for r in rejects.to_pylist()}
    assert set(rows) | set(rejected) == {"gsm8k:0", "gsm8k:1", "free:0"} and not set(rows) & set(rejected)
    for x, text in zip(got, got_verdicts):
        pid, verdict = x.problem["id"], parsed[x.problem["id"]]
        if x.problem["kind"] == "math":  # math-verify decides; the judge's verdict is recorded beside it
            r = rows[pid]
            assert (r["verifier"], r["math_verify"], r["correct"]) == ("math_verify", x.math_verify, x.math_verify)
            assert r["judge_correct"] == (verdict["correct"] if verdict else None)
            assert r["judge_model"] == (f"openai:{folder}" if verdict else None)
        elif verdict is None:  # the judge decides and could not: a rejected row with its raw answer
            assert pid not in rows and rejected[pid]["reason"] == "judge_failed"
            assert rejected[pid]["outcome"] == "rejected" and "parse_failed" in rejected[pid]["detail"]
            assert rejected[pid]["raw"] == text[:2000]
        else:
            r = rows[pid]
            assert (r["verifier"], r["correct"], r["judge_correct"]) == ("judge", verdict["correct"], verdict["correct"])
    disagreements = sum(1 for x in got if x.problem["kind"] == "math" and parsed[x.problem["id"]]
                        and parsed[x.problem["id"]]["correct"] != x.math_verify)
    assert md["judge_disagreements"] == disagreements

    # lineage and accounting
    for r in sols.to_pylist():
        x = next(s for s in got if s.problem["id"] == r["all_prompt_id"])
        assert (r["solution"], r["final_answer"], r["sample"]) == (x.text, x.final_answer, 0)
        assert r["generator_model"] == f"openai:{folder}" and r["source"] == "gsm8k"
        assert r["task"] == ("solve_math_problem@1" if r["kind"] == "math" else "solve_open_problem@1")
        assert r["prompt"] == next(p["prompt"] for p in problems if p["id"] == r["all_prompt_id"])
    assert (md["rows_in"], md["rows_out"], md["rejected"], md["removed"]) == (3, sols.num_rows, rejects.num_rows, 0)
    by_id = {r["all_prompt_id"]: r for r in rates.to_pylist()}
    assert sorted(by_id) == ["free:0", "gsm8k:0", "gsm8k:1"]
    for pid, r in by_id.items():
        assert (r["n_requested"], r["generated"]) == (1, 1)
        assert r["n"] == (0 if pid in rejected else 1)
        assert r["status"] == ("no_verdict" if pid in rejected else "ok")

    # a cached re-run: the server is sent nothing, the tables are the same
    md2, checks2 = _materialize(instance, root, llm)
    assert all(checks2.values())
    assert md2["llm_calls"] == 0 and md2["llm_cache_hits"] == 6 and hits[CHAT] - before == 6
    assert _read(root, "generated_solutions").equals(sols) and _read(root, "solution_pass_rates").equals(rates)
