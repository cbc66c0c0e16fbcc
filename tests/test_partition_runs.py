"""Two runs of one partition at once, in two real processes on one real (SQLite) instance: the run
created later stops before any step with one clear error; the first run, held at a known point
(raw_records written, merged_prompts not yet), then finishes, and both tables are exactly its output."""

import os
import shutil
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, REPO
from .helpers import resources_for
from .test_pool import _read_until

pytestmark = pytest.mark.slow


def worker(root, limit, name, *gate):
    return [sys.executable, "-m", "tests.partition_worker", root, str(BUNDLED_REGISTRY), "gsm8k", str(limit),
            name, *map(str, gate)]


@pytest.fixture
def home_instance(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("source", ["gsm8k", "self_instruct"])
        yield instance


def run_of(instance, name) -> dg.DagsterRun:
    (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"posttrain/test": name}))
    return run


def test_second_run_of_a_partition_stops_and_the_table_is_one_runs_output(tmp_path, home_instance):
    instance, root = home_instance, str(tmp_path / "storage")
    first = subprocess.Popen(worker(root, 7, "first", "gate"), cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _read_until(first, "at the gate: run ")
        store = ParquetStore(root)
        raw_path, merged_path = store.path("raw_records", "gsm8k"), store.path("merged_prompts", "gsm8k")
        raw_at_gate = open(raw_path, "rb").read()
        assert not os.path.exists(merged_path)

        second = subprocess.run(worker(root, 5, "second"), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stdout + second.stderr
        r1, r2 = run_of(instance, "first"), run_of(instance, "second")
        assert (r1.status, instance.get_run_by_id(r2.run_id).status) == (dg.DagsterRunStatus.STARTED,
                                                                        dg.DagsterRunStatus.FAILURE)
        events = [e.dagster_event for e in instance.all_logs(r2.run_id) if e.dagster_event]
        types = [e.event_type_value for e in events]
        assert "STEP_START" not in types and "ASSET_MATERIALIZATION" not in types
        (init_failure,) = [e for e in events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
        assert init_failure.event_specific_data.error.message.strip() == (
            f"resources.run_guard.PartitionBusyError: run {r2.run_id} stops: run {r1.run_id} (STARTED, created "
            f"earlier) is materialising partition 'gsm8k' of merged_prompts, raw_records; two runs writing "
            f"one partition would mix their outputs. Launch this run again once run {r1.run_id} has ended "
            f"(or mark it failed if its process died).")
        assert open(raw_path, "rb").read() == raw_at_gate and not os.path.exists(merged_path)

        # another partition is not held up by the first run
        other = dg.materialize([raw_records, merged_prompts], partition_key="self_instruct", instance=instance,
                               resources=resources_for(root, BUNDLED_REGISTRY))
        assert other.success

        out = first.communicate("open\n", timeout=300)[0]  # open the gate
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            first.kill()
    ids = [f"gsm8k:train_300:{i}" for i in range(7)]  # the first run's 7 rows, none of the second's 5
    assert pq.read_table(raw_path)["source_row"].to_pylist() == list(range(7))
    assert pq.read_table(merged_path)["all_prompt_id"].to_pylist() == ids
    for asset in ("raw_records", "merged_prompts"):
        mats = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        assert {(m.run_id, m.partition_key) for m in mats} == {(r1.run_id, "gsm8k"), (other.run_id, "self_instruct")}
    assert instance.get_run_by_id(r1.run_id).status == dg.DagsterRunStatus.SUCCESS
