"""Reliability of the LLM stages (nothing lost, nothing asked twice, nothing duplicated):

- SIGKILL in the middle of every LLM stage: `tests/stage_worker.py` materialises the stage in a
  subprocess that kills itself right after its k-th committed cache chunk
  (POSTTRAIN_TEST_SIGKILL_AFTER_CHUNKS, a deterministic kill point, not a timer); the re-run asks the
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

from .helpers import REPO, mat_metadata
from .stage_cases import CACHE, STAGES, model_calls

KILL_ENV = "POSTTRAIN_TEST_SIGKILL_AFTER_CHUNKS"


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


# (stage, kill after chunk k, requests committed by then, requests of an uninterrupted run). chunk = 1
# prompt everywhere; a chunk commits n answers (the prompt's samples):
#   scoring     3 gold + 3 question log-probs (1 each), then 3 items x 2 samples: 6 + 1 x 2 = 8 of 12
#   evolution   2 width + 2 depth evolutions (every 24-token evolution is then eliminated: no judge): 3 of 4
#   generation  3 problems x 2 samples, then the judge on the 1 answer math-verify cannot read: 2 x 2 = 4 of 7
#   magpie      2 instruction calls x 2 samples, then 3 responses (1 truncated instruction): 2 + 2 + 1 = 5 of 7
#   tagging     3 rows x 2 JSON tags, then the reward judge on the 2 rows with a response: 4 of 8
#   pairs       2 prompts x (greedy + 1 sample), then the reward judge on the 4 candidates: 4 + 1 = 5 of 8
KILLS = [("scoring", 7, 8, 12), ("evolution", 3, 3, 4), ("generation", 2, 4, 7), ("magpie", 3, 5, 7),
         ("tagging", 4, 4, 8), ("pairs", 5, 5, 8)]


@pytest.mark.slow
@pytest.mark.parametrize("stage,kill_after,committed,total", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_mid_stage_then_the_rerun_asks_only_for_what_is_missing(stage, kill_after, committed, total,
                                                                        tmp_path, instance):
    assert KILL_ENV not in os.environ
    case = STAGES[stage]
    reference, root = str(tmp_path / "reference"), str(tmp_path / "killed")
    case.write_inputs(reference)
    case.write_inputs(root)

    # an uninterrupted run: every request asked once, none failed
    ref_md = mat_metadata(case.materialise(reference, instance), case.outputs[0])
    assert (model_calls(ref_md), cache_hits(ref_md), cache_rows(reference)) == (total, 0, total)
    expected = tables(reference, case)

    # the killed run: SIGKILLed right after its k-th committed chunk, nothing written but the cache
    proc = subprocess.run([sys.executable, "-m", "tests.stage_worker", stage, root], cwd=REPO,
                          env={**os.environ, KILL_ENV: str(kill_after)},
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
    ids = got[case.outputs[0]][case.row_id].to_pylist()
    assert len(ids) == len(set(ids)) == ref_md["rows_out"]
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert md["rows_in"] == md["rows_out"] + md["removed"] + md["rejected"]
