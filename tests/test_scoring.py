"""difficulty_scores through Dagster with the embedded model: cached re-runs make zero model calls;
a run killed with SIGKILL resumes without losing or repeating work."""

import json
import os
import signal
import sqlite3
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.scoring.assets import difficulty_scores
from posttrain_assets.records.unify import SFT_SCHEMA, cot_from
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, REPO
from .helpers import mat_metadata, resources_for, upstream_specs

RUN = {"ops": {"difficulty_scores": {"config": {"max_items": 4, "samples": 2, "max_new_tokens": 24, "chunk": 1}}}}


@pytest.fixture
def gsm_records(tmp_path, bundled):
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    spec = bundled.get("gsm8k")
    cot, _ = cot_from(merge_prompts(rows_to_table(load_rows(spec)), spec).table)
    store.write(cot, store.path("cot_records", "gsm8k"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "gsm8k"))
    return root


def score(instance, root, run_config=RUN):
    if "gsm8k" not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", ["gsm8k"])
    return dg.materialize(upstream_specs("cot_records", "sft_records") + [difficulty_scores],
                          selection=[difficulty_scores], partition_key="gsm8k", instance=instance,
                          resources=resources_for(root, BUNDLED_REGISTRY), run_config=run_config)


def test_second_materialisation_makes_no_model_calls(gsm_records, instance):
    first = mat_metadata(score(instance, gsm_records), "difficulty_scores")
    assert (first["rows_out"], first["llm_requests"], first["llm_calls"], first["llm_cache_hits"]) == (4, 12, 12, 0)
    assert first["llm_failures"] == 0 and first["llm_tokens_out"] > 0
    t1 = pq.read_table(f"{gsm_records}/difficulty_scores/source=gsm8k/data.parquet")
    second = mat_metadata(score(instance, gsm_records), "difficulty_scores")
    assert (second["llm_calls"], second["llm_cache_hits"]) == (0, 12)
    t2 = pq.read_table(f"{gsm_records}/difficulty_scores/source=gsm8k/data.parquet")
    assert t1.equals(t2)
    row = json.loads(t1["score_json"][0].as_py())
    assert set(row) == {"id", "prompt", "gold", "avg_logprob", "ensemble_acc", "irt_beta", "difficulty_z", "responses"}
    assert len(row["responses"]) == 2 and row["avg_logprob"] < 0


def test_sigkill_resume_loses_and_repeats_nothing(gsm_records, instance):
    """The worker SIGKILLs itself right after its 8th committed cache chunk (chunk = 1 item): the 6
    avg_logprob answers and 2 items x 2 samples are cached, nothing else. The re-run asks only for
    the rest."""
    cache_file = os.path.join(gsm_records, "_llm_cache", "llm_cache.sqlite")
    run = json.loads(json.dumps(RUN))
    run["ops"]["difficulty_scores"]["config"].update(max_items=6, max_new_tokens=48)
    env = {**os.environ, "POSTTRAIN_TEST_SIGKILL_AFTER_CHUNKS": "8"}
    proc = subprocess.run([sys.executable, "-m", "tests.score_worker", gsm_records, str(BUNDLED_REGISTRY),
                           "gsm8k", json.dumps(run)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(cache_file)
    before = con.execute("SELECT count(*) FROM answers").fetchone()[0]
    con.close()
    total = 6 + 6 * 2  # logprob per item + 2 samples per item
    assert before == 6 + 2 * 2
    md = mat_metadata(score(instance, gsm_records, run), "difficulty_scores")
    assert md["llm_calls"] == total - before and md["llm_cache_hits"] == before
    con = sqlite3.connect(cache_file)
    assert con.execute("SELECT count(*) FROM answers").fetchone()[0] == total  # nothing asked twice
    con.close()
    assert md["rows_out"] == 6
