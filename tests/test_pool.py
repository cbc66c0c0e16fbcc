"""The `gpu` concurrency pool, for real: with the instance config from deploy/dagster.yaml (one slot)
and the slot held by another step, a model step waits ("Step blocked by limit for pool gpu") and
starts only once the slot is free, instead of loading a second engine beside the first."""

import os
import shutil
import subprocess
import sys

import dagster as dg

from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, REPO


def _events(instance, run_id):
    return [e for e in instance.all_logs(run_id) if e.dagster_event is not None]


def _read_until(proc, text: str) -> str:
    """Read the worker's log lines until one contains `text` (an event, no timer); the worker
    ending first fails the test with what it printed."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"worker exited ({proc.wait()}) before {text!r}:\n{''.join(seen[-40:])}")


def test_model_step_waits_for_the_gpu_slot(tmp_path, bundled):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    root = str(tmp_path / "storage")
    spec = bundled.get("self_instruct")
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table.slice(0, 8)
    store = ParquetStore(root)
    store.write(merged, store.path("merged_prompts", "self_instruct"))

    env = {**os.environ, "DAGSTER_HOME": str(home)}
    os.environ["DAGSTER_HOME"], saved = str(home), os.environ.get("DAGSTER_HOME")
    try:
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions("source", ["self_instruct"])
        storage = instance.event_log_storage
        assert storage.get_pool_config().default_pool_limit == 1
        # another step (an engine already on the GPU) holds the pool's only slot
        storage.initialize_concurrency_limit_to_default("gpu")
        assert storage.claim_concurrency_slot("gpu", "other-run", "other_step").is_claimed
        proc = subprocess.Popen([sys.executable, "-m", "tests.pool_worker", root, str(BUNDLED_REGISTRY),
                                 "self_instruct"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            _read_until(proc, "Step blocked by limit for pool gpu")  # dagster's engine event, logged
            (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"posttrain/test": "pool"}))
            rid = run.run_id
            blocked = [e for e in _events(instance, rid)
                       if e.dagster_event.message == "Step blocked by limit for pool gpu"]
            assert blocked and blocked[0].dagster_event.step_key == "prompt_embeddings"
            assert not [e for e in _events(instance, rid) if e.dagster_event.event_type_value == "STEP_START"]
            storage.free_concurrency_slot_for_step("other-run", "other_step")  # the other engine is done
            rest = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, rest
        finally:
            if proc.poll() is None:
                proc.kill()
        events = _events(instance, rid)
        start = [e for e in events if e.dagster_event.event_type_value == "STEP_START"]
        assert len(start) == 1 and start[0].timestamp > blocked[0].timestamp
        assert [e.dagster_event.event_type_value for e in events].count("ASSET_MATERIALIZATION") == 1
        assert storage.get_concurrency_info("gpu").slot_count == 1
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = saved
