"""The demo on the bundled sources + one source per conversation format (alpaca, sharegpt, messages,
turns lists) + a source whose rows are all rejected: it runs to the end, every per-source step of
the bad source materialises an empty table whose checks pass, and the summary says why in one line."""

import os
import re
import subprocess
import sys

import duckdb
import pyarrow.parquet as pq

from .conftest import REPO

REGISTRY = REPO / "tests" / "data" / "demo_formats_registry.yaml"
PER_SOURCE = ("merged_prompts", "prompt_embeddings", "deduplicated_prompts", "sft_records",
              "cot_records", "preference_records", "difficulty_scores", "selected_seeds", "generated_solutions",
              "solution_pass_rates", "hard_problems", "evolved_instructions", "magpie_instructions",
              "quality_tags", "filtered_instructions", "preference_pairs")


def test_demo_on_every_format_and_an_all_rejected_source(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "POSTTRAIN_STORAGE": str(tmp_path / "storage")}
    out = subprocess.run([sys.executable, "-m", "posttrain_assets.demo", "--registry", str(REGISTRY)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stdout + out.stderr
    table = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines()
             if re.match(r"^[a-z0-9_]+\s+(cot|sft|prompt|preference|attributes)\s", ln)}
    assert len(table) == 12 and "FAILED" not in out.stdout
    # raw rows, raw rejected, records in, kept, removed, rejected (demo table columns 2..7)
    assert table["sharegpt_as_generic"][2:8] == ["40", "0", "40", "0", "0", "40"]
    assert table["alpaca_seed_tasks"][2:6] == ["40", "0", "40", "40"]
    assert table["messages_kto_mix"][2:6] == ["40", "0", "40", "40"]
    assert table["turns_realpersonachat"][2:6] == ["30", "0", "30", "30"]
    assert ("sharegpt_as_generic: all 40 rows of 'sharegpt_as_generic' rejected: not_text on field "
            "'conversations[0]' (turn 0: expected a string, got dict)") in out.stdout
    con = duckdb.connect(str(tmp_path / "storage" / "catalog.duckdb"), read_only=True)
    assert pq.read_table(tmp_path / "storage" / "raw_records" / "source=sharegpt_as_generic" / "data.parquet"
                         ).num_rows == 40  # loaded fine: the rows fail at the merge
    assert "self_instruct: all" not in out.stdout  # rows removed by policy only are no failure
    for asset in PER_SOURCE:  # the bad source has an empty table, with its schema, in every later asset
        t = pq.read_table(tmp_path / "storage" / asset / "source=sharegpt_as_generic" / "data.parquet")
        assert t.num_rows == 0 and t.schema.names == pq.read_schema(
            tmp_path / "storage" / asset / "source=gsm8k" / "data.parquet").names, asset
    # the Alpaca slice is the Self-Instruct seed tasks reshaped: every row is a cross-source duplicate
    assert con.execute("SELECT count(*), count(*) FILTER (WHERE NOT keep AND representative_source = "
                       "'self_instruct') FROM dedup_clusters WHERE source = 'alpaca_seed_tasks'").fetchall() == [(40, 40)]
    scored = dict(con.execute("SELECT source, count(*) FROM difficulty_scores GROUP BY 1").fetchall())
    # oasst2_labelled is of kind `attributes` (labelling only); the bundled sources with `model_stages: []`
    # have no scoring run, nor any other model job
    assert scored == {"gsm8k": 12, "sharegpt_glaive_toolcall": 12, "messages_kto_mix": 12}
    assert {r[0] for r in con.execute("SELECT DISTINCT source FROM evolved_instructions").fetchall()} <= {
        "gsm8k", "sharegpt_glaive_toolcall", "messages_kto_mix", "turns_realpersonachat",
        "turns_realpersonachat_first", "alpaca_seed_tasks", "sharegpt_as_generic"}
