"""One run per asset partition: a run that would write the same asset partitions as an earlier run
still in flight stops before its step runs, so a partition's files never mix two runs' outputs.

Queued runs (UI, backfills, sensors) can wait instead, with the instance's run queue limited to one
run per `dagster/partition` value (`concurrency: runs: tag_concurrency_limits: [{key: dagster/partition,
value: {applyLimitPerUniqueValue: true}, limit: 1}]`). This guard also covers what bypasses the queue
(`dagster asset materialize`, `dagster.materialize`, a second deployment on the same instance). The rule is checked at
every step start (resource setup) against the instance's run storage, so it holds across processes
and machines: of two overlapping runs, the one created later fails; the earlier never waits for it.
"""

from __future__ import annotations

from typing import Optional

import dagster as dg

PARTITION_TAG = "dagster/partition"
#: a run in these states may still write: an earlier one in them blocks a later run
ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class PartitionBusyError(RuntimeError):
    """Another run is materialising the same asset partitions."""


def run_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[dg.AssetKey]:
    """The asset keys a run materialises: its asset selection, else the assets of its plan's steps."""
    if run.asset_selection:
        return set(run.asset_selection)
    if not run.execution_plan_snapshot_id:
        return set()
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    keys = set(plan.step_keys_to_execute or [s.key for s in plan.steps])
    return {o.properties.asset_key for s in plan.steps if s.key in keys
            for o in s.outputs if o.properties is not None and o.properties.asset_key is not None}


def check_partition_free(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Raise PartitionBusyError when an earlier run, still active, writes one of this run's asset
    partitions (same `dagster/partition` tag, or both unpartitioned)."""
    partition: Optional[str] = run.tags.get(PARTITION_TAG)
    filters = dg.RunsFilter(statuses=ACTIVE_STATUSES, tags={PARTITION_TAG: partition} if partition else None)
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(filters=filters)}
    mine = records.get(run.run_id) or instance.get_run_record_by_id(run.run_id)
    if mine is None:
        return
    assets = run_assets(instance, run)
    for rid, rec in sorted(records.items(), key=lambda kv: (kv[1].create_timestamp, kv[0])):
        other = rec.dagster_run
        if (rec.create_timestamp, rid) >= (mine.create_timestamp, run.run_id):
            break  # only earlier runs block this one
        if not partition and other.tags.get(PARTITION_TAG):
            continue
        shared = sorted(k.to_user_string() for k in assets & run_assets(instance, other))
        if shared:
            where = f"partition {partition!r}" if partition else "the unpartitioned assets"
            raise PartitionBusyError(
                f"run {run.run_id} stops: run {rid} ({other.status.value}, created earlier) is "
                f"materialising {where} of {', '.join(shared)}; two runs writing one partition would "
                f"mix their outputs. Launch this run again once run {rid} has ended (or mark it "
                f"failed if its process died).")
