"""Run by test_postgres_instance in subprocesses: each call is a new Dagster process on the instance
at $DAGSTER_HOME (deploy/dagster-postgres.yaml); storage root and registry come from
$POSTTRAIN_STORAGE and $POSTTRAIN_SOURCES, as in a deployment.

    python -m tests.postgres_worker write SOURCE...  add the `source` partitions, run ingest_job's
        raw_records + merged_prompts for each source, request an asset backfill of the same assets
        over the same sources; prints {"runs": [...], "backfill": id} as JSON
    python -m tests.postgres_worker backfill  one iteration of the backfill daemon's loop on the
        code location of workspace.yaml (what `dagster-daemon run` does every few seconds): it picks
        up the requested backfill and submits its runs to the run queue (no daemon dequeues them)
    python -m tests.postgres_worker read  prints what the instance holds (storage classes, runs,
        materialisations, partitions, backfills) as JSON
"""

import json
import logging
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from posttrain_assets.definitions import defs

ASSETS = [dg.AssetKey("raw_records"), dg.AssetKey("merged_prompts")]
REPO = Path(__file__).resolve().parents[1]
RESULT = "postgres_worker result: "  # the line the test reads (a code server logs to stdout too)
TAGS = {"posttrain/test": "postgres"}


def write(instance: dg.DagsterInstance, sources: list[str]) -> dict:
    instance.add_dynamic_partitions("source", sources)
    job = defs.resolve_job_def("ingest_job")
    runs = []
    for key in sources:
        res = job.execute_in_process(instance=instance, partition_key=key, asset_selection=ASSETS, tags=TAGS)
        assert res.success, key
        runs.append(res.run_id)
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(), asset_graph=defs.resolve_asset_graph(), partition_names=sources,
        asset_selection=ASSETS, backfill_timestamp=time.time(), tags=TAGS, dynamic_partitions_store=instance,
        all_partitions=False, title="ingest again", description=None, run_config=None)
    instance.add_backfill(backfill)
    return {"runs": runs, "backfill": backfill.backfill_id}


def backfill(instance: dg.DagsterInstance) -> dict:
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    target = WorkspaceFileTarget(paths=[str(REPO / "workspace.yaml")])
    with create_test_daemon_workspace_context(target, instance) as context:
        errors = [e for e in execute_backfill_iteration(context, logging.getLogger("backfill")) if e is not None]
    return {"errors": [e.to_string() for e in errors]}


def read(instance: dg.DagsterInstance) -> dict:
    runs = sorted(instance.get_runs(), key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)
    mats = {}
    for key in ASSETS:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records
        mats[key.to_user_string()] = sorted(
            [r.run_id, r.asset_materialization.partition, r.asset_materialization.metadata["dagster/row_count"].value]
            for r in records)
    backfills = []
    for b in instance.get_backfills():
        data = b.asset_backfill_data
        target, requested, materialized = (
            sorted([p.asset_key.to_user_string(), p.partition_key] for p in subset.iterate_asset_partitions())
            for subset in (data.target_subset, data.requested_subset, data.materialized_subset))
        backfills.append({
            "id": b.backfill_id, "status": b.status.value, "title": b.title, "tags": dict(b.tags),
            "assets": sorted(k.to_user_string() for k in b.asset_selection),
            "partitions": sorted({p for _, p in target}), "target": target, "requested": requested,
            "materialized": materialized})
    return {
        "storage": [type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                               instance.schedule_storage)],
        "runs": [{"id": r.run_id, "job": r.job_name, "status": r.status.value,
                  "partition": r.tags.get("dagster/partition"), "backfill": r.tags.get("dagster/backfill"),
                  "test": r.tags.get("posttrain/test"),
                  "assets": sorted(k.to_user_string() for k in r.asset_selection or ())} for r in runs],
        "materializations": mats,
        "partitions": list(instance.get_dynamic_partitions("source")),
        "backfills": backfills,
    }


def main(cmd: str, *args: str) -> None:
    with dg.DagsterInstance.get() as instance:
        out = {"write": lambda: write(instance, list(args)), "backfill": lambda: backfill(instance),
               "read": lambda: read(instance)}[cmd]()
    print(RESULT + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
