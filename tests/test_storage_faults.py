"""Storage faults on real files and real materialisations: a corrupt or truncated partition file is one
clear error naming asset, partition and path, and re-materialising repairs it; a write that runs out
of space (a real tmpfs of a few pages, mounted by the test) leaves the previous file byte for byte."""

import os
import subprocess
import uuid

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.storage import ParquetIOManager, ParquetStore, StorageResource, StorageWriteError

from .conftest import BUNDLED_REGISTRY
from .helpers import resources_for

KEY = "gsm8k"  # the bundled 300 GSM8K rows


def run(instance, resources, selection, limit=None):
    if KEY not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [KEY])
    cfg = {"ops": {"raw_records": {"config": {"limit": limit}}}} if limit else None
    return dg.materialize([raw_records, merged_prompts], selection=selection, partition_key=KEY,
                          instance=instance, resources=resources, run_config=cfg, raise_on_error=False)


def failure(result) -> list[str]:
    """The step failure's message and those of its causes, innermost last."""
    (ev,) = [e for e in result.all_events if e.is_step_failure]
    err, parts = ev.step_failure_data.error, []
    while err is not None:
        parts.append(err.message.strip())
        err = err.cause
    return parts


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def garbage(path):
    open(path, "wb").write(b"this is not a parquet file\n" * 40)


def garbage_between_magic(path):  # what a torn write of another format could leave: right magic, wrong body
    size = os.path.getsize(path)
    open(path, "wb").write(b"PAR1" + bytes(range(256)) * (size // 256) + b"PAR1")


@pytest.mark.parametrize("damage", [truncate, garbage, garbage_between_magic])
def test_corrupt_partition_names_asset_partition_path_and_rematerialising_repairs(
        tmp_path, instance, storage_root, damage):
    resources = resources_for(storage_root, BUNDLED_REGISTRY)
    assert run(instance, resources, [raw_records, merged_prompts]).success
    store = ParquetStore(storage_root)
    raw_path, merged_path = store.path("raw_records", KEY), store.path("merged_prompts", KEY)
    good_raw, merged_before = pq.read_table(raw_path), open(merged_path, "rb").read()

    damage(raw_path)
    res = run(instance, resources, [merged_prompts])
    assert not res.success
    msg = failure(res)
    assert len(msg) == 2 and msg[0].startswith("dagster._core.errors.DagsterExecutionLoadInputError: "
                          'Error occurred while loading input "raw_records" of step "merged_prompts"')
    inner = msg[1]
    assert inner.startswith(f"resources.storage.CorruptPartitionError: raw_records partition source='gsm8k': "
                            f"unreadable Parquet file at {raw_path} (")
    assert inner.endswith("); materialise raw_records for it again to rewrite the file")
    assert open(merged_path, "rb").read() == merged_before  # the failed step wrote nothing
    assert not res.get_asset_materialization_events()

    # re-materialising the upstream rewrites the file; the downstream then loads it
    assert run(instance, resources, [raw_records]).success
    assert pq.read_table(raw_path).equals(good_raw)
    res = run(instance, resources, [merged_prompts])
    assert res.success
    merged = pq.read_table(merged_path)
    assert merged.num_rows == 300
    assert merged["all_prompt_id"].to_pylist() == [f"gsm8k:train_300:{i}" for i in range(300)]


# ------------------------------------------------------------------------------ no space left


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (16 pages): mounted when root, skipped with the reason otherwise."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (os.geteuid() != 0)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_no_space_left_keeps_the_old_partition_file(tmp_path, instance, tiny_tmpfs):
    root = str(tiny_tmpfs / "storage")
    storage = StorageResource(root=root, catalog_path=str(tmp_path / "catalog.duckdb"))  # the catalogue elsewhere
    resources = {**resources_for(root, BUNDLED_REGISTRY), "storage": storage,
                 "io_manager": ParquetIOManager(storage=storage)}
    assert run(instance, resources, [raw_records], limit=5).success
    store = ParquetStore(root)
    path = store.path("raw_records", KEY)
    old = open(path, "rb").read()
    assert pq.read_table(path)["source_row"].to_pylist() == [0, 1, 2, 3, 4]

    res = run(instance, resources, [raw_records])  # all 300 rows: more than the tmpfs holds
    assert not res.success
    *_, inner, cause = failure(res)
    assert inner.startswith(f"resources.storage.StorageWriteError: cannot write {path}: ")
    assert cause.startswith("OSError: [Errno 28] ") and cause.endswith("No space left on device")
    assert inner.endswith("; the file there before (if any) is unchanged")
    assert open(path, "rb").read() == old  # byte for byte
    assert files_under(root) == ["_rejects/raw_records/source=gsm8k/data.parquet",
                                 "raw_records/source=gsm8k/data.parquet"]  # no temp file left behind

    # the same for a model artifact (write_bytes), and the space is usable again after the failure
    blob = store.path("artifact", None)
    store.write_bytes(blob, b"v1" * 1000)
    with pytest.raises(StorageWriteError) as info:
        store.write_bytes(blob, os.urandom(256 * 1024))
    assert info.value.errno == 28 and str(info.value).startswith(f"cannot write {blob}: ")
    assert store.read_bytes(blob) == b"v1" * 1000
    assert not [f for f in files_under(root) if ".tmp-" in f]
    store.write(pa.table({"id": [uuid.uuid4().hex]}), store.path("probe", None))  # space freed
