"""raw_records and merged_prompts stream (issue 19): record batches in, Parquet row groups out.

The streamed path must give exactly the old single-table path's tables, accounting, rejects and
metadata, whatever the batch size; these tests compare the two on real bundled sources."""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from partitions.registry import load_registry
from posttrain_assets.common.accounting import rejects_table
from posttrain_assets.common.metadata import TableSummary, length_stats, markdown_preview
from posttrain_assets.ingest.loaders import (LoadedRows, RawBatches, iter_rows, load_rows, rows_to_table,
                                             stream_raw_table, table_to_rows)
from posttrain_assets.ingest.merging import MERGED_SCHEMA, language_counts, merge_prompt_batches, merge_prompts
from resources.storage import ParquetStore, PartitionReader, TableStream

from .conftest import BUNDLED_REGISTRY
from .helpers import mat_metadata, materialize_source, write_registry

# real sources with a raw reject (awesome), a merge reject (hh), an exact duplicate removed and
# message trees (oasst2_labelled), nested JSON columns (oasst_en)
SOURCES = ["awesome_chatgpt_prompts", "hh_rlhf_harmless_base", "oasst2_labelled", "oasst_en", "gsm8k"]


def _old_path(spec):
    loaded = load_rows(spec)
    raw = rows_to_table(loaded)
    return loaded, raw, merge_prompts(raw, spec)


def _streamed_raw(spec, tmp_path, batch_rows):
    out = LoadedRows()
    raw = stream_raw_table(iter_rows(spec, out), str(tmp_path / f"spill-{batch_rows}"), batch_rows)
    table = pa.Table.from_batches(list(raw.batches()), schema=raw.schema)
    raw.close()
    return out, table


def _rows(table: pa.Table) -> list:
    return table.to_pylist()


@pytest.mark.parametrize("key", SOURCES)
@pytest.mark.parametrize("batch_rows", [1, 7, 10**6])
def test_streamed_raw_and_merge_equal_the_single_table_path(tmp_path, key, batch_rows):
    spec = load_registry(BUNDLED_REGISTRY).get(key)
    loaded, raw_old, merged_old = _old_path(spec)
    out, raw_new = _streamed_raw(spec, tmp_path, batch_rows)
    assert raw_new.schema.equals(raw_old.schema, check_metadata=True)
    assert raw_new.equals(raw_old)
    assert (out.rows_read, out.blank_lines, out.files) == (loaded.rows_read, loaded.blank_lines, loaded.files)
    assert out.issues == loaded.issues

    store = ParquetStore(str(tmp_path / "store"))
    path = store.path("raw_records", key)
    assert store.write_stream(TableStream(raw_new.schema, raw_new.to_batches(max_chunksize=batch_rows)), path,
                              row_group_rows=batch_rows) == raw_old.num_rows
    reader = PartitionReader(store, path)
    assert reader.num_rows == raw_old.num_rows and reader.read().equals(raw_old)
    if raw_old.num_rows > batch_rows:
        assert pq.ParquetFile(path).num_row_groups > 1
    merger, batches = merge_prompt_batches(reader, spec, read_batch_rows=batch_rows, batch_rows=batch_rows)
    merged_new = pa.Table.from_batches(list(batches), schema=MERGED_SCHEMA)
    assert merged_new.equals(merged_old.table)
    assert merger.issues == merged_old.issues
    assert merger.accounting().as_dict() == merged_old.accounting.as_dict()
    assert merger.raw_rows == merged_old.raw_rows


@pytest.mark.parametrize("key", ["awesome_chatgpt_prompts", "hh_rlhf_harmless_base", "oasst2_labelled"])
def test_materialised_in_row_groups_reads_back_as_the_old_path(tmp_path, instance, storage_root, key):
    """Both assets through Dagster and the IO manager, 7-row batches: the same Parquet rows,
    accounting, rejects and metadata as the single-table path computes."""
    spec = load_registry(BUNDLED_REGISTRY).get(key)
    loaded, raw_old, merged_old = _old_path(spec)
    run = {"ops": {"raw_records": {"config": {"batch_rows": 7}}, "merged_prompts": {"config": {"batch_rows": 7}}}}
    res = materialize_source(key, instance, storage_root, BUNDLED_REGISTRY, run_config=run)
    assert res.success and all(c.passed for c in res.get_asset_check_evaluations())
    raw_path = f"{storage_root}/raw_records/source={key}/data.parquet"
    merged_path = f"{storage_root}/merged_prompts/source={key}/data.parquet"
    assert pq.ParquetFile(raw_path).num_row_groups > 1
    assert pq.read_table(raw_path).equals(raw_old)
    assert pq.read_table(merged_path).equals(merged_old.table)
    for asset, issues in (("raw_records", loaded.issues), ("merged_prompts", merged_old.issues)):
        got = pq.read_table(f"{storage_root}/_rejects/{asset}/source={key}/data.parquet")
        assert got.equals(rejects_table(key, asset, issues))
    raw_md, md = mat_metadata(res, "raw_records"), mat_metadata(res, "merged_prompts")
    assert (raw_md["rows_in"], raw_md["rows_out"], raw_md["rejected"]) == \
        (loaded.rows_read, raw_old.num_rows, len(loaded.issues))
    acc = merged_old.accounting
    assert (md["rows_in"], md["rows_out"], md["removed"], md["rejected"], md["dagster/row_count"]) == \
        (acc.rows_in, acc.rows_out, acc.removed, acc.rejected, merged_old.table.num_rows)
    assert md["languages"] == language_counts(merged_old.table)
    stats = length_stats(merged_old.table, "prompt")
    assert {k: md[k] for k in stats} == stats
    cols = ["all_prompt_id", "prompt", "response", "chosen", "reference_answer"]
    assert md["preview"] == markdown_preview(merged_old.table, columns=cols)
    assert raw_md["preview"] == markdown_preview(raw_old, columns=raw_old.column_names[:6])


def test_column_first_seen_in_a_later_batch_and_types_that_change(tmp_path):
    """Batch 1 has no `late` column and all-null `n`; later batches bring `late`, ints in `n`, a
    text value in the int column `mixed` and nested values: one schema, the same as rows_to_table."""
    rows = ([{"a": "x", "n": None, "mixed": 1}] * 3 + [{"a": "y", "n": 5, "mixed": 2, "late": "here"}]
            + [{"a": "z", "mixed": "three", "late": {"k": [1, 2]}, "b": True}] + [{"a": None}])
    loaded = LoadedRows(rows=rows, source_files=["f.jsonl"] * len(rows), source_rows=list(range(len(rows))))
    old = rows_to_table(loaded)
    for batch_rows in (1, 2, 3, 4, 10**6):
        raw = RawBatches(str(tmp_path / f"s{batch_rows}"), batch_rows).add_all(
            zip(loaded.source_files, loaded.source_rows, rows))
        raw.finish()
        new = pa.Table.from_batches(list(raw.batches()), schema=raw.schema)
        assert new.schema.equals(old.schema, check_metadata=True) and new.equals(old), batch_rows
        assert [r for _, _, r in table_to_rows(new)] == [
            {k: r.get(k) for k in ("a", "n", "mixed", "late", "b")} for r in rows]
        raw.close()
    assert old.schema.field("late").metadata  # JSON text: a string in one row, an object in another
    assert old.schema.field("n").type == pa.int64() and old.schema.field("b").type == pa.bool_()
    assert json.loads(old["mixed"][4].as_py()) == "three"


def test_empty_partition_streams(tmp_path, instance):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    reg = write_registry(tmp_path / "reg.yaml", [{"key": "empty", "kind": "sft", "adapter": "generic",
                                                  "fields": {"prompt": "q"}, "licence": "x",
                                                  "loader": {"path": str(tmp_path / "empty.jsonl")}}])
    root = str(tmp_path / "storage")
    res = materialize_source("empty", instance, root, reg)
    assert res.success
    raw = pq.read_table(f"{root}/raw_records/source=empty/data.parquet")
    assert raw.num_rows == 0 and raw.column_names == ["source_file", "source_row"]
    merged = pq.read_table(f"{root}/merged_prompts/source=empty/data.parquet")
    assert merged.num_rows == 0 and merged.schema.equals(MERGED_SCHEMA)
    md = mat_metadata(res, "merged_prompts")
    assert (md["rows_in"], md["rows_out"], md["dagster/row_count"], md["languages"]) == (0, 0, 0, {})
    assert mat_metadata(res, "raw_records")["blank_lines"] == 2


def test_write_stream_is_atomic_and_names_a_bad_batch(tmp_path):
    store = ParquetStore(str(tmp_path))
    path = store.path("t", "k")
    good = pa.table({"a": [1, 2, 3]})
    store.write(good, path)
    bad = TableStream(good.schema, iter([good.to_batches()[0], pa.record_batch({"a": ["x"]})]))
    with pytest.raises(ValueError, match="streamed batch 1: schema differs"):
        store.write_stream(bad, path)
    assert pq.read_table(path).equals(good)  # the file before is unchanged, no temp file left
    assert [p.name for p in (tmp_path / "t" / "source=k").iterdir()] == ["data.parquet"]
    assert store.write_stream(TableStream(good.schema, iter([])), path) == 0
    assert pq.read_table(path).num_rows == 0


def test_summary_gives_the_table_metadata(tmp_path):
    """TableSummary over batches = the figures computed on the whole table (real merged rows)."""
    spec = load_registry(BUNDLED_REGISTRY).get("hh_rlhf_harmless_base")
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
    for n in (1, 13, 10**6):
        s = TableSummary(MERGED_SCHEMA, text_column="prompt", count_column="language",
                         unique_column="all_prompt_id", required=["prompt"], nonblank=["prompt"])
        for _ in s.tap(merged.to_batches(max_chunksize=n)):
            pass
        assert s.num_rows == merged.num_rows and s.distinct == merged.num_rows
        assert s.length_stats() == length_stats(merged, "prompt")
        assert s.value_counts() == language_counts(merged)
        assert s.head.equals(merged.slice(0, 5))


def test_io_manager_hands_a_reader_to_an_annotated_input(tmp_path, instance):
    from .helpers import resources_for

    @dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="source"))
    def up():
        return TableStream.from_table(pa.table({"x": list(range(10))}), batch_rows=3)

    @dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="source"))
    def down(up: PartitionReader):
        assert isinstance(up, PartitionReader) and up.num_rows == 10
        return pa.table({"n": [sum(b.num_rows for b in up.iter_batches(4))]})

    instance.add_dynamic_partitions("source", ["k"])
    root = str(tmp_path / "storage")
    res = dg.materialize([up, down], partition_key="k", instance=instance,
                         resources=resources_for(root, BUNDLED_REGISTRY))
    assert res.success
    assert pq.read_table(f"{root}/down/source=k/data.parquet")["n"].to_pylist() == [10]
