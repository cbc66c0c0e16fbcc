"""generated_solutions + solution_pass_rates: real generations on the embedded model (small: 2-3
problems, n = 2, 64 new tokens), the verdict bookkeeping on constructed samples, and the seed's
pass-rate label filter on real labels (8 scored Qwen2.5-Math samples per MATH problem)."""

import json
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from posttrain_assets.common.accounting import Accounting
from posttrain_assets.common.pass_rate import filter_by_pass_rate, pass_rates_from_scored
from posttrain_assets.common.sizing import full_sizes
from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA
from posttrain_assets.synthesis.solutions import (PASS_RATES_SCHEMA, SOLUTIONS_SCHEMA, SOLVE_MATH_PROBLEM, Sample,
                                                  assemble, is_math_answer, pass_rate_histogram, problems_from_records,
                                                  problems_from_seeds, roc_auc, to_judge)
from posttrain_assets.synthesis.assets import SolutionsConfig, generated_solutions
from resources.llm import LLMCache, LLMResource, cache_key
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, SHARED_DATA, needs_shared
from .helpers import SAMPLE, mat_metadata, resources_for, step_error, upstream_specs

# the full-size defaults pinned (on the embedded engine they are the CPU sizes: common/sizing.py)
SMALL = {**full_sizes(SolutionsConfig), "n": 2, "max_tokens": 64, "chunk": 2}
JA_PROBLEM = "リンゴが3個あります。さらに4個もらいました。リンゴは全部で何個ですか？"


def _gsm(k: int) -> list[dict]:
    rows = [json.loads(x) for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:k]]
    return [{"all_prompt_id": f"gsm8k:{i}", "source": "gsm8k", "prompt": r["question"],
             "answer": r["answer"].split("####")[-1].strip(), "solution": r["answer"]} for i, r in enumerate(rows)]


def _seeds(rows: list[dict]) -> pa.Table:
    cols = ["all_prompt_id", "source", "prompt", "answer", "solution"]
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in cols})


def _write_inputs(root: str, seeds: list[dict], key: str = "gsm8k") -> None:
    store = ParquetStore(root)
    store.write(_seeds(seeds), store.path("selected_seeds", key))
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", key))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", key))


def _run(instance, root, config, llm=None, key="gsm8k", raise_on_error=True):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    res = resources_for(root, BUNDLED_REGISTRY)
    if llm is not None:
        res["llm"] = llm
    return dg.materialize(upstream_specs("selected_seeds", "cot_records", "sft_records") + [generated_solutions],
                          selection=[generated_solutions], partition_key=key, instance=instance, resources=res,
                          run_config={"ops": {"generated_solutions": {"config": config}}},
                          raise_on_error=raise_on_error)


def _tables(root, key="gsm8k"):
    return (pq.read_table(f"{root}/generated_solutions/source={key}/data.parquet"),
            pq.read_table(f"{root}/solution_pass_rates/source={key}/data.parquet"),
            pq.read_table(f"{root}/_rejects/generated_solutions/source={key}/data.parquet"))


def _checks(result) -> dict:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in
            (ev.event_specific_data for ev in result.all_events if ev.event_type_value == "ASSET_CHECK_EVALUATION")}


# --------------------------------------------------------------------------- real generations

def test_solutions_structure_pass_rates_accounting_cache_and_japanese(tmp_path, instance):
    root = str(tmp_path / "storage")
    seeds = _gsm(2) + [{"all_prompt_id": "gsm8k:ja", "source": "gsm8k", "prompt": JA_PROBLEM, "answer": "7",
                        "solution": "3 + 4 = 7"}]
    _write_inputs(root, seeds)
    # how many verdicts the 135M judge fails to write depends on the CPU's kernels: no limit here (the
    # limit itself: test_garbage_judge_verdict_is_a_counted_failure)
    lenient = {**SMALL, "max_judge_failure_rate": 1.0}
    first = _run(instance, root, lenient)
    sol_md, pr_md = mat_metadata(first, "generated_solutions"), mat_metadata(first, "solution_pass_rates")
    sols, rates, rejects = _tables(root)
    assert sols.schema.equals(SOLUTIONS_SCHEMA) and rates.schema.equals(PASS_RATES_SCHEMA)

    # every problem ends in the per-problem table; pass rate = correct / n; kept = rows written
    assert sorted(rates["all_prompt_id"].to_pylist()) == sorted(s["all_prompt_id"] for s in seeds)
    for r in rates.to_pylist():
        assert r["kind"] == "math" and r["n_requested"] == 2 and r["status"] == ("ok" if r["n"] else "no_verdict")
        assert r["n"] <= r["generated"] == 2 and r["pass_rate"] == (r["correct"] / r["n"] if r["n"] else None)
        assert r["kept"] == sum(1 for s in sols.to_pylist() if s["all_prompt_id"] == r["all_prompt_id"])
    assert {r["all_prompt_id"]: r["language"] for r in rates.to_pylist()}["gsm8k:ja"] == "ja"

    # kept solutions are the correct ones, with their verdicts and models
    for s in sols.to_pylist():
        assert s["correct"] is True and s["sample"] in (0, 1) and s["solution"] and s["final_answer"]
        assert s["generator_model"].startswith("embedded:") and s["task"] == "solve_math_problem@1"
        assert (s["verifier"], s["math_verify"]) in (("math_verify", True), ("judge", None))

    # accounting: solutions (3 problems x 2) and problems (3), the blocking checks pass
    assert (sol_md["rows_in"], sol_md["rows_out"]) == (6, sols.num_rows)
    assert sol_md["rows_in"] == sol_md["rows_out"] + sol_md["removed"] + sol_md["rejected"]
    assert sol_md["rejected_by_reason"] == dict(Counter(rejects.filter(pc.equal(rejects["outcome"], "rejected"))["reason"].to_pylist()))
    assert sol_md["removed_by_reason"].get("incorrect", 0) == 6 - sols.num_rows - sol_md["rejected"]
    assert (pr_md["rows_in"], pr_md["rows_out"], pr_md["removed"], pr_md["rejected"]) == (3, 3, 0, 0)
    assert all(_checks(first).values()) and len(_checks(first)) == 3
    assert sol_md["llm_calls"] >= 6 and sol_md["llm_cache_hits"] == 0 and sol_md["generations_per_s"] > 0
    assert "pass_rate_histogram" in pr_md and "funnel" in sol_md

    # second run: every answer from the cache, the same tables
    second = _run(instance, root, lenient)
    md2 = mat_metadata(second, "generated_solutions")
    assert md2["llm_calls"] == 0 and md2["llm_cache_hits"] == sol_md["llm_requests"]
    s2, r2, _ = _tables(root)
    assert s2.equals(sols) and r2.equals(rates)

    # the Japanese problem was asked with the Japanese template: the same request is a cache hit
    ja_row = {"question": JA_PROBLEM, "language": "ja"}
    assert "段階的に考えて解き" in SOLVE_MATH_PROBLEM.render(ja_row)[0]["content"]
    llm = LLMResource()
    with llm.session(cache=LLMCache(f"{root}/_llm_cache/llm_cache.sqlite")) as s:
        (res,) = s.run(SOLVE_MATH_PROBLEM, [ja_row], n=2, seed=0, temperature=0.7, max_tokens=64)
        assert (s.stats.calls, s.stats.cache_hits) == (0, 2) and "段階的" in res.messages[0]["content"]
        # ... and the English rendering of the same problem was never asked
        d = s.decoding(SOLVE_MATH_PROBLEM, n=2, seed=0, temperature=0.7, max_tokens=64).key()
        en = SOLVE_MATH_PROBLEM.render({**ja_row, "language": "en"})
        keys = [cache_key(s.settings, "chat", d, SOLVE_MATH_PROBLEM.key(), m, i) for m in (res.messages, en) for i in (0, 1)]
        assert [k in s.cache.get_many(keys) for k in keys] == [True, True, False, False]


def test_garbage_judge_verdict_is_a_counted_failure(tmp_path, instance):
    """A judge cut at 2 new tokens answers '{"corr...': unparseable. The free-form problem's solutions
    it had to decide are `judge_failed` rejects (never accepted); on the math problem (judge_math)
    math-verify's verdict stands and the failures are counted."""
    root = str(tmp_path / "storage")
    free = {"all_prompt_id": "self_instruct:0", "source": "gsm8k", "answer": "Paris is the capital of France.",
            "prompt": "What is the capital of France? Answer in one sentence.", "solution": "Paris is the capital of France."}
    _write_inputs(root, _gsm(1) + [free])
    config = {**SMALL, "judge_math": True, "judge_max_tokens": 2}
    result = _run(instance, root, {**config, "max_judge_failure_rate": 1.0})
    md = mat_metadata(result, "generated_solutions")
    sols, rates, rejects = _tables(root)
    by_id = {r["all_prompt_id"]: r for r in rates.to_pylist()}
    assert by_id["self_instruct:0"]["kind"] == "free" and by_id["gsm8k:0"]["kind"] == "math"
    assert by_id["self_instruct:0"]["n"] == 0 and by_id["self_instruct:0"]["pass_rate"] is None
    assert by_id["self_instruct:0"]["status"] == "no_verdict"
    assert by_id["self_instruct:0"]["generated"] == 2 and by_id["self_instruct:0"]["kept"] == 0
    assert md["judge_failures"] == 4 and md["llm_parse_failures"] == 4 and md["judge_disagreements"] == 0
    failed = rejects.filter(pc.equal(rejects["reason"], "judge_failed")).to_pylist()
    assert len(failed) == md["rejected_by_reason"]["judge_failed"] >= 2
    assert all(f["raw"].startswith("{") and "parse_failed" in f["detail"] for f in failed)
    assert "self_instruct:0" not in sols["all_prompt_id"].to_pylist()
    assert md["rows_in"] == 4 == md["rows_out"] + md["removed"] + md["rejected"]
    # with the default max_judge_failure_rate (20%) the same answers (from the cache) fail the partition
    again = _run(instance, root, config, raise_on_error=False)
    assert not again.success and "solutions failed" in step_error(again) and "judge_failed" in step_error(again)


def test_empty_input_gives_empty_tables_with_schema(tmp_path, instance):
    root = str(tmp_path / "storage")
    _write_inputs(root, [], key="empty")
    result = _run(instance, root, SMALL, key="empty")
    sols, rates, rejects = _tables(root, "empty")
    assert sols.num_rows == rates.num_rows == rejects.num_rows == 0
    assert sols.schema.equals(SOLUTIONS_SCHEMA) and rates.schema.equals(PASS_RATES_SCHEMA)
    md = mat_metadata(result, "generated_solutions")
    assert md["rows_in"] == 0 and "llm_calls" not in md  # no model loaded
    assert all(_checks(result).values())


# --------------------------------------------------------------------------- pure

def _p(pid, kind="math", gold="7"):
    return {"id": pid, "source": "s", "prompt": f"problem {pid}", "gold": gold, "kind": kind, "language": "en"}


def test_verdicts_disagreements_and_accounting_on_constructed_samples():
    a, b, c = _p("a"), _p("b", "free", "Paris"), _p("c")
    samples = [
        Sample(a, 0, text="... \\boxed{7}", final_answer="7", math_verify=True, judge_correct=False, judge_reason="x"),
        Sample(a, 1, text="... 8", final_answer="8", math_verify=False, judge_error="parse_failed: no JSON", judge_raw="{"),
        Sample(b, 0, text="Paris.", final_answer="Paris.", judge_correct=True, judge_reason="same city"),
        Sample(b, 1, text="Lyon.", final_answer="Lyon.", judge_error="parse_failed: no JSON", judge_raw="{\"corr"),
        Sample(c, 0, error="llm_failed: timeout"),
        Sample(c, 1, text="no idea", final_answer="no idea"),  # math-verify cannot read it: the judge decides
    ]
    assert [x.needs_judge for x in samples] == [False, False, True, True, False, True]
    assert len(to_judge(samples, judge_math=False)) == 3 and len(to_judge(samples, judge_math=True)) == 5
    samples[5].judge_correct = False
    res = assemble([a, b, c], samples, n=2, skipped=[(_p("d", gold=""), "no_gold_answer")])
    rates = {r["all_prompt_id"]: r for r in res.pass_rates.to_pylist()}
    assert (rates["a"]["n"], rates["a"]["correct"], rates["a"]["pass_rate"], rates["a"]["disagreements"]) == (2, 1, 0.5, 1)
    assert (rates["b"]["n"], rates["b"]["pass_rate"]) == (1, 1.0)  # the unparseable verdict is no verdict
    assert (rates["c"]["generated"], rates["c"]["n"], rates["c"]["pass_rate"]) == (1, 1, 0.0)
    assert rates["d"]["status"] == "no_gold_answer" and rates["d"]["pass_rate"] is None
    assert [rates[k]["status"] for k in "abc"] == ["ok", "ok", "ok"]
    assert res.solutions["all_prompt_id"].to_pylist() == ["a", "b"]
    reasons = Counter((i.outcome, i.reason) for i in res.issues)
    assert reasons == {("rejected", "judge_failed"): 1, ("rejected", "llm_failed"): 1, ("removed", "incorrect"): 2}
    assert (res.counts["judge_disagreements"], res.counts["judge_failures"]) == (1, 2)
    assert Accounting.from_issues(res.counts["requested"], res.solutions.num_rows, res.issues).balanced
    # the label filter inside the stage: a's correct solution goes (pass rate 0.5 > 0.4), b's stays
    res = assemble([a, b, c], samples, n=2, max_pass_rate=0.4)
    assert res.solutions.num_rows == 0 and Counter(i.reason for i in res.issues)["above_max_pass_rate"] == 2
    assert roc_auc([1, 1, 0, 0], [True, False, False, True]) == 0.5 and roc_auc([0.9, 0.1], [True, False]) == 1.0


def test_problem_kinds_from_real_records(bundled):
    from posttrain_assets.ingest.loaders import load_rows, rows_to_table
    from posttrain_assets.ingest.merging import merge_prompts
    from posttrain_assets.records.unify import cot_from, sft_from

    gsm = bundled.get("gsm8k")
    cot, _ = cot_from(merge_prompts(rows_to_table(load_rows(gsm)), gsm).table)
    si = bundled.get("self_instruct")
    sft, _ = sft_from(merge_prompts(rows_to_table(load_rows(si)), si).table)
    problems = problems_from_records(cot, sft)
    kinds = Counter(p["kind"] for p in problems)
    assert len(problems) == cot.num_rows + sft.num_rows == 475
    assert all(p["kind"] == "math" for p in problems[:cot.num_rows])
    assert kinds["free"] == sum(not is_math_answer(a) for a in sft["answer"].to_pylist()) > 150
    seeds = problems_from_seeds(_seeds(_gsm(5)))
    assert [p["kind"] for p in seeds] == ["math"] * 5
    assert is_math_answer("\\frac{1}{2}") and is_math_answer("18 dollars") and not is_math_answer("Paris")
    assert not is_math_answer("There are 3 primary colours: red, yellow and blue.")


@needs_shared
def test_pass_rate_label_filter_on_real_labels():
    """MATH x 8 Qwen2.5-Math samples (`score` flags): pass rate = mean of the 8 flags; 86 problems
    8/8, 4 problems 0/8, 10 in between; the seed's filter keeps pass rate <= threshold."""
    rows = [json.loads(x) for x in (SHARED_DATA / "math_qwen25_cot8_scored" / "math_cot_100.jsonl").read_text().splitlines()]
    table = pass_rates_from_scored(rows)
    assert table.num_rows == 100 and set(table["n"].to_pylist()) == {8}
    rates = table["pass_rate"].to_pylist()
    assert (rates.count(1.0), rates.count(0.0)) == (86, 4)
    assert rates[0] == 1.0 and sum(rates) == pytest.approx(sum(sum(r["score"]) / 8 for r in rows))
    expect = {0.0: 4, 0.25: 6, 0.5: 11, 0.75: 13, 0.875: 14, 1.0: 100}
    for threshold, kept in expect.items():
        out, removed = filter_by_pass_rate(table, threshold)
        assert out.num_rows == kept and removed.get("above_max_pass_rate", 0) == 100 - kept
        assert all(p <= threshold for p in out["pass_rate"].to_pylist())
    hist = {h["pass_rate"]: h["problems"] for h in pass_rate_histogram(rates)}
    assert hist == {"0": 4, "(0, 0.25]": 2, "(0.25, 0.5]": 5, "(0.5, 0.75]": 2, "(0.75, 1)": 1, "1": 86, "none": 0}
    # a missing label is counted, not kept (selection's `no_pass_rate`)
    with_null = pa.concat_tables([table, pa.table({"all_prompt_id": ["x"], "n": pa.array([0], pa.int64()),
                                                   "correct": pa.array([0], pa.int64()),
                                                   "pass_rate": pa.array([None], pa.float64())})])
    out, removed = filter_by_pass_rate(with_null, 0.5)
    assert out.num_rows == 11 and removed == {"above_max_pass_rate": 89, "no_pass_rate": 1}


@needs_shared
def test_hard_problems_asset_selects_by_pass_rate_on_real_labels(tmp_path, instance):
    """hard_problems reads solution_pass_rates: here the real MATH x 8 Qwen2.5-Math labels in that
    table's shape, plus two problems the stage did not ask (not_sampled, no_gold_answer) and one it
    asked whose solutions all failed (n = 0): never kept, each counted under its status."""
    from posttrain_assets.selection.assets import hard_problems

    rows = [json.loads(x) for x in (SHARED_DATA / "math_qwen25_cot8_scored" / "math_cot_100.jsonl").read_text().splitlines()]
    rates = pass_rates_from_scored(rows).to_pylist()
    table_rows = [{"all_prompt_id": f"math:{r['idx']}", "source": "math", "language": "en", "kind": "math",
                   "prompt": r["question"], "gold_answer": r["answer"], "status": "ok", "n_requested": 8,
                   "generated": 8, "n": p["n"], "correct": p["correct"], "pass_rate": p["pass_rate"],
                   "kept": p["correct"], "disagreements": 0} for r, p in zip(rows, rates)]
    blank = {**table_rows[0], "n": 0, "correct": 0, "pass_rate": None, "kept": 0}
    table_rows += [{**blank, "all_prompt_id": "math:x1", "status": "not_sampled", "n_requested": 0, "generated": 0},
                   {**blank, "all_prompt_id": "math:x2", "status": "no_gold_answer", "n_requested": 0, "generated": 0},
                   {**blank, "all_prompt_id": "math:x3", "status": "all_failed", "generated": 0}]
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    store.write(pa.Table.from_pylist(table_rows, schema=PASS_RATES_SCHEMA), store.path("solution_pass_rates", "math"))
    instance.add_dynamic_partitions("source", ["math"])
    run = dg.materialize(upstream_specs("solution_pass_rates") + [hard_problems], selection=[hard_problems],
                         partition_key="math", instance=instance, resources=resources_for(root, BUNDLED_REGISTRY),
                         run_config={"ops": {"hard_problems": {"config": {"max_pass_rate": 0.5}}}})
    md = mat_metadata(run, "hard_problems")
    out = pq.read_table(f"{root}/hard_problems/source=math/data.parquet")
    assert out.num_rows == md["rows_out"] == 11  # 4 at 0/8 + 7 in (0, 0.5]
    assert md["rows_in"] == 103 and md["removed_by_reason"] == {"above_max_pass_rate": 89, "not_sampled": 1,
                                                               "no_gold_answer": 1, "all_failed": 1}
    assert _checks(run) == {("hard_problems", "row_accounting"): True}
    assert all(p <= 0.5 for p in out["pass_rate"].to_pylist())
    by_id = {r["idx"]: r for r in rows}
    first = out.to_pylist()[0]
    assert first["prompt"] == by_id[int(first["all_prompt_id"].split(":")[1])]["question"] and first["n"] == 8
    # evolved_instructions can read it (a prompt table: all_prompt_id, prompt, language)
    from posttrain_assets.synthesis.evolution import input_items
    items, dropped = input_items(out, "math", 4000)
    assert len(items) == 11 and not dropped and {it["language"] for it in items} == {"en"}
