"""Reliability of the LLM stages (nothing lost, nothing asked twice, nothing duplicated):

- SIGKILL in the middle of every LLM stage: `tests/stage_worker.py` materialises the stage in a
  subprocess that kills itself right after its k-th committed cache chunk
  (the checkpoint hook it injects into its LLMResource, a deterministic kill point, not a timer); the re-run asks the
  model only for what the killed run had not committed, and writes the tables an uninterrupted run
  writes (outputs and rejects).
- A faulty LLM server (`tests/llm_servers.py`) behind the `openai` backend for generated_solutions:
  500s, requests that hang past the client's timeout and non-JSON answers are retried, then counted
  failed rows with their reason; the partition fails only above `max_failure_rate`.

Every stage runs on the embedded model with every size explicit (tests/stage_cases.py)."""

import os
import signal
import sqlite3
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from resources.llm import LLMResource, ModelSpec

from .helpers import REPO, mat_metadata, step_error
from .llm_servers import faulty_server
from .stage_cases import CACHE, STAGES, model_calls, write_seeds

def cache_rows(root: str) -> int:
    path = os.path.join(root, CACHE)
    if not os.path.exists(path):
        return 0
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM answers").fetchone()[0]
    finally:
        con.close()


def cache_hits(md: dict) -> int:
    return md["llm_cache_hits"] + md.get("reward_llm_cache_hits", 0)


def tables(root: str, case) -> dict:
    """The stage's output tables and its rejects table for the case's partition."""
    paths = {out: f"{root}/{out}/source={case.key}/data.parquet" for out in case.outputs}
    paths["rejects"] = f"{root}/_rejects/{case.outputs[0]}/source={case.key}/data.parquet"
    return {name: pq.read_table(p) for name, p in paths.items()}


# (stage, kill points, requests of an uninterrupted run, its output rows). chunk = 1 prompt everywhere;
# a chunk commits n answers (the prompt's samples). A kill point (k, c): SIGKILL right after the k-th
# committed chunk, when the cache holds c requests. The first phases of each stage do not depend on
# what the model writes, so their chunks are known exactly; the later ones (how many evolutions reach
# the judge, which instructions survive, which candidates are scored) depend on the model's text, which
# differs across CPUs: there the uninterrupted run's own counts are the expected ones (None), and a kill
# point in a later phase is used only where that run shows the phase has a chunk after it.
#   scoring     3 gold + 3 question log-probs (1 each), then 3 items x 2 samples: 6 + 1 x 2 = 8 of 12
#   evolution   2 width + 2 depth evolutions, then the judges and answers for those not eliminated: 3
#   generation  3 problems x 2 samples, then the judge on the answers math-verify cannot read: 2 x 2 = 4
#   magpie      2 instruction calls x 2 samples, then 1 response per kept instruction: 2 + 2 + 1 = 5
#               (inside the responses), or 2 (inside the instructions)
#   tagging     3 rows x 2 JSON tags, then the reward judge on the 2 rows with a response: 4 of 8
#   pairs       2 prompts x (greedy + 1 sample), then the reward judge on the candidates of each prompt
#               with 2 unique ones: 4 + 1 = 5 (inside the reward), or 3 (inside the generations)
KILLS = [("scoring", ((7, 8),), 12, 3), ("evolution", ((3, 3),), None, None), ("generation", ((2, 4),), None, None),
         ("magpie", ((3, 5), (1, 2)), None, None), ("tagging", ((4, 4),), 8, 3),
         ("pairs", ((5, 5), (3, 3)), None, None)]


@pytest.mark.slow
@pytest.mark.parametrize("stage,kill_points,total,rows", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_mid_stage_then_the_rerun_asks_only_for_what_is_missing(stage, kill_points, total, rows,
                                                                        tmp_path, instance):
    case = STAGES[stage]
    reference, root = str(tmp_path / "reference"), str(tmp_path / "killed")
    case.write_inputs(reference)
    case.write_inputs(root)

    # an uninterrupted run: every request asked once, none failed
    ref_md = mat_metadata(case.materialise(reference, instance), case.outputs[0])
    total = model_calls(ref_md) if total is None else total
    rows = ref_md["rows_out"] if rows is None else rows
    assert (model_calls(ref_md), cache_hits(ref_md), cache_rows(reference), ref_md["rows_out"]) == (total, 0, total, rows)
    assert ref_md.get("llm_failures", 0) == 0
    expected = tables(reference, case)
    # the latest kill point still inside the stage (some request after it); the last one always is
    kill_after, committed = next(((k, c) for k, c in kill_points if c < total), kill_points[-1])
    assert committed < total

    # the killed run: SIGKILLed right after its k-th committed chunk, nothing written but the cache
    proc = subprocess.run([sys.executable, "-m", "tests.stage_worker", stage, root, str(kill_after)], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert cache_rows(root) == committed
    assert not any(os.path.exists(f"{root}/{out}") for out in case.outputs)

    # the re-run asks only for the rest, and writes what the uninterrupted run wrote
    result = case.materialise(root, instance)
    md = mat_metadata(result, case.outputs[0])
    assert (model_calls(md), cache_hits(md)) == (total - committed, committed)
    assert cache_rows(root) == total  # nothing asked twice
    got = tables(root, case)
    for name, table in expected.items():
        assert got[name].equals(table), name
    ids = list(zip(*(got[case.outputs[0]][c].to_pylist() for c in case.row_id)))
    assert len(ids) == len(set(ids)) == expected[case.outputs[0]].num_rows == rows
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert md["rows_in"] == md["rows_out"] + md["removed"] + md["rejected"]
    assert (md["rows_in"], md["rows_out"]) == (ref_md["rows_in"], ref_md["rows_out"])


# ------------------------------------------------------------------------------ a faulty LLM server

ANSWER = "2 + 3 = 5.\n#### 5"
#: problems (gold 5) whose requests the server answers, or fails as the marker says (llm_servers.FAULTS)
FAULT_SEEDS = [{"all_prompt_id": f"faults:{name}", "source": "gsm8k", "prompt": f"What is {q}? {marker}".strip(),
                "answer": "5", "solution": ANSWER}
               for name, q, marker in (("fine0", "2 + 3", ""), ("fine1", "1 + 4", ""), ("flaky", "3 + 2", "[fault:flaky]"),
                                       ("500", "4 + 1", "[fault:500]"), ("hang", "0 + 5", "[fault:hang]"),
                                       ("garbage", "5 + 0", "[fault:garbage]"))]
FAILING = ("500", "hang", "garbage")


def _faulty_llm(url: str, max_failure_rate: float) -> LLMResource:
    # a request that hangs times out after timeout_s; every transient failure is tried max_retries times
    return LLMResource(models={"generator": ModelSpec(backend="openai", model="faulty", base_url=url)},
                       timeout_s=5.0, max_retries=3, max_concurrency=4, max_failure_rate=max_failure_rate)


@pytest.mark.slow
def test_a_faulty_server_is_retried_then_counted_and_fails_the_partition_only_above_the_limit(tmp_path, instance):
    """generated_solutions over the openai backend, 6 problems x n = 2: 2 fine, 1 flaky (a 500 on each
    request's first attempt), 1 always 500, 1 hanging past the client's timeout, 1 answering HTML."""
    case = STAGES["generation"]
    root = str(tmp_path / "storage")
    write_seeds(root, FAULT_SEEDS)
    config = {"n": 2, "keep": "correct", "max_problems": 0, "max_tokens": 32, "chunk": 1}
    with faulty_server(ANSWER) as (url, server):
        result = case.materialise(root, instance, llm=_faulty_llm(url, 0.5), config=config)
        # retries, counted at the server per (fault, seed): 3 attempts for each failing request,
        # 2 for each flaky one, 1 for each fine one (2 fine problems share a key)
        assert dict(server.hits) == {("", 0): 2, ("", 1): 2, ("[fault:flaky]", 0): 2, ("[fault:flaky]", 1): 2,
                                     **{(f"[fault:{f}]", s): 3 for f in FAILING for s in (0, 1)}}
        md = mat_metadata(result, "generated_solutions")
        # 6 of 12 requests failed: 50%, not above max_failure_rate 0.5 -> the partition is written
        assert (md["llm_calls"], md["llm_failures"], md["llm_cache_hits"]) == (12, 6, 0)
        assert (md["rows_in"], md["rows_out"], md["removed"], md["rejected"]) == (12, 6, 0, 6)
        assert md["rejected_by_reason"] == {"llm_failed": 6}
        assert cache_rows(root) == 6  # failures are not cached
        out = tables(root, case)
        sols, rates, rejects = out["generated_solutions"], out["solution_pass_rates"], out["rejects"]
        # the data holds real answers only: no row, no placeholder for a failed request
        assert sorted((r["all_prompt_id"], r["sample"]) for r in sols.to_pylist()) == \
            [(f"faults:{p}", s) for p in ("fine0", "fine1", "flaky") for s in (0, 1)]
        assert set(sols["solution"].to_pylist()) == {ANSWER} and all(sols["correct"].to_pylist())
        assert {r["all_prompt_id"]: (r["status"], r["generated"], r["n"], r["pass_rate"]) for r in rates.to_pylist()} == {
            **{f"faults:{p}": ("ok", 2, 2, 1.0) for p in ("fine0", "fine1", "flaky")},
            **{f"faults:{p}": ("all_failed", 0, 0, None) for p in FAILING}}
        # each failed request: a reject naming the problem, the sample and the error
        details = sorted(rejects["detail"].to_pylist())
        assert set(rejects["reason"].to_pylist()) == {"llm_failed"} and len(details) == 6
        assert details[:2] == ["faults:500 sample 0: llm_failed: /chat/completions: HTTP 500: boom",
                               "faults:500 sample 1: llm_failed: /chat/completions: HTTP 500: boom"]
        assert details[2:4] == [f"faults:garbage sample {s}: llm_failed: /chat/completions: answer is not JSON: "
                                "'<html>502 Bad Gateway</html>'" for s in (0, 1)]
        assert all(d.startswith(f"faults:hang sample {s}: llm_failed: /chat/completions: ReadTimeout: ") and
                   d.endswith("Read timed out. (read timeout=5.0)") for s, d in zip((0, 1), details[4:]))

        # max_failure_rate 0.4: the 6 answers come from the cache, the 6 failing requests are asked
        # again (3 attempts each) and fail the partition with the numbers and the first error
        server.hits.clear()
        strict = case.materialise(root, instance, llm=_faulty_llm(url, 0.4), config=config, raise_on_error=False)
        assert not strict.success
        assert step_error(strict) == ("source 'gsm8k': 6/12 solutions failed (50% > max_failure_rate 40%); first: "
                                      "llm_failed: faults:500 sample 0: llm_failed: /chat/completions: HTTP 500: boom")
        assert dict(server.hits) == {(f"[fault:{f}]", s): 3 for f in FAILING for s in (0, 1)}
    assert cache_rows(root) == 6
