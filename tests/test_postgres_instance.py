"""The Postgres-backed instance (deploy/dagster-postgres.yaml) against a real, throwaway PostgreSQL
cluster (tests/postgres.py): what one Dagster process writes — dynamic `source` partitions, ingest_job
runs with their event log, an asset backfill — is there for the next process, and it is in Postgres.

Three processes on the same $DAGSTER_HOME, one after the other:
1. `write`: adds the partitions, runs ingest_job (raw_records + merged_prompts) per source, requests a
   backfill of the same assets over the same sources; exits.
2. `backfill`: one iteration of the backfill daemon's loop (the code location of workspace.yaml on a
   code server), as `dagster-daemon run` does: it reads the backfill the first process stored and
   submits one run per source to the run queue. Nothing dequeues them: the queued runs are the
   backfill's state to survive (executing them needs the whole daemon, whose sensors also start
   other runs in this code location: not deterministic).
3. `read`: prints what the instance holds; the test asserts it exactly and reads the same tables
   with psycopg2.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from .conftest import BUNDLED_REGISTRY, REPO
from .postgres import postgres_cluster  # noqa: F401 - the fixture
from .helpers import write_registry
from .postgres_worker import RESULT

PG_YAML = REPO / "deploy" / "dagster-postgres.yaml"
#: source: rows kept by raw_records and by merged_prompts (awesome_chatgpt_prompts: 1 of 211 CSV rows rejected)
ROWS = {"awesome_chatgpt_prompts": 210, "self_instruct": 175}


def test_postgres_yaml_connection_from_env_and_same_queue_as_local():
    pg, local = yaml.safe_load(PG_YAML.read_text()), yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert pg["storage"]["postgres"]["postgres_db"] == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}, "scheme": "postgresql+psycopg2"}
    assert {k: v for k, v in pg.items() if k != "storage"} == local


def _registry(path):
    """The two bundled sources, with absolute loader paths."""
    entries = {s["key"]: s for s in yaml.safe_load(BUNDLED_REGISTRY.read_text())["sources"]}
    picked = [entries[k] for k in ROWS]
    for s in picked:
        s["loader"]["path"] = str((BUNDLED_REGISTRY.parent / s["loader"]["path"]).resolve())
    return write_registry(path, picked)


def _worker(env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.postgres_worker", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    return json.loads(line[len(RESULT):])


@pytest.mark.slow
def test_runs_events_partitions_and_backfill_survive_a_restart(tmp_path, postgres_cluster):  # noqa: F811
    pg = postgres_cluster
    print(f"\nthrowaway PostgreSQL cluster started in {pg.startup_s:.2f} s (initdb + start + CREATE DATABASE)")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PG_YAML, home / "dagster.yaml")
    env = {**os.environ, **pg.env(), "DAGSTER_HOME": str(home), "POSTTRAIN_STORAGE": str(tmp_path / "storage"),
           "POSTTRAIN_SOURCES": str(_registry(tmp_path / "sources.yaml"))}
    sources = list(ROWS)

    written = _worker(env, "write", *sources)
    assert _worker(env, "backfill") == {"errors": []}
    seen = _worker(env, "read")

    direct, bid = written["runs"], written["backfill"]
    assert seen["storage"] == ["PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
    assert seen["partitions"] == sources
    both = ["merged_prompts", "raw_records"]
    runs = seen["runs"]  # oldest first: the direct runs, then the backfill's (queued: no daemon dequeues)
    assert runs == [
        {"id": rid, "job": "ingest_job", "status": "SUCCESS", "partition": key, "backfill": None,
         "test": "postgres", "assets": both} for rid, key in zip(direct, sources)] + [
        {"id": r["id"], "job": "__ASSET_JOB", "status": "QUEUED", "partition": key, "backfill": bid,
         "test": "postgres", "assets": both} for r, key in zip(runs[2:], sources)]
    assert len({r["id"] for r in runs}) == 4
    # the event log: one materialisation per asset and source, from the direct runs, with our row counts
    for asset in both:
        assert seen["materializations"][asset] == sorted([rid, key, ROWS[key]] for rid, key in zip(direct, sources))
    every = sorted([a, k] for a in both for k in sources)
    assert seen["backfills"] == [{
        "id": bid, "status": "REQUESTED", "title": "ingest again", "tags": {"posttrain/test": "postgres"},
        "assets": both, "partitions": sorted(sources), "target": every, "requested": every, "materialized": []}]

    # the same facts straight from Postgres' tables, and no SQLite file under $DAGSTER_HOME
    assert pg.query("SELECT run_id, pipeline_name, status FROM runs ORDER BY id") == \
        [(r["id"], r["job"], r["status"]) for r in runs]
    assert pg.query("SELECT asset_key, partition, run_id FROM event_logs WHERE dagster_event_type = "
                    "'ASSET_MATERIALIZATION' ORDER BY 1, 2") == \
        [(json.dumps([a]), k, rid) for a in both for rid, k in sorted(zip(direct, sources), key=lambda x: x[1])]
    assert pg.query("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'source' ORDER BY id") == \
        [(k,) for k in sources]
    assert pg.query("SELECT key, status FROM bulk_actions") == [(bid, "REQUESTED")]
    assert sorted(p.name for p in home.rglob("*.db")) == []
