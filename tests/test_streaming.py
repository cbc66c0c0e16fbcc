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
        s.add(merged.slice(3, 2).to_batches()[0])  # two ids again: not unique any more
        assert (s.num_rows, s.distinct) == (merged.num_rows + 2, merged.num_rows)


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


# ---------------------------------------------------------------- deduplicated_prompts and records


def _clusters_for(merged: pa.Table, key: str, removed_every: int = 3) -> pa.Table:
    """A dedup_clusters table for one source: every `removed_every`-th prompt removed as a
    semantic duplicate of the first one (plus another source's rows, which must be ignored)."""
    from posttrain_assets.dedup.duplicates import CLUSTERS_SCHEMA

    ids = merged["all_prompt_id"].to_pylist()
    rows = [{"all_prompt_id": i, "source": key, "cluster_id": n, "representative_id": ids[0] if n % removed_every == 1 else i,
             "representative_source": key, "similarity": 0.93 if n % removed_every == 1 else 1.0,
             "match": "semantic" if n % removed_every == 1 else "unique", "cluster_size": 1,
             "keep": n % removed_every != 1, "removed_reason": "semantic_duplicate" if n % removed_every == 1 else None,
             "language": "en", "representable": True} for n, i in enumerate(ids)]
    rows += [{**rows[0], "all_prompt_id": "other:1", "source": "other", "keep": False, "removed_reason": "x"}]
    return pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA)


@pytest.mark.parametrize("batch_rows", [1, 7, 10**6])
def test_survivor_filter_equals_select_survivors(batch_rows):
    from posttrain_assets.dedup.duplicates import SurvivorFilter, select_survivors

    spec = load_registry(BUNDLED_REGISTRY).get("oasst2_labelled")
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
    clusters = _clusters_for(merged, spec.key)
    kept, issues, acc = select_survivors(merged, clusters, spec.key)
    mine = clusters.filter(pa.compute.equal(clusters["source"], spec.key))
    f = SurvivorFilter(mine, spec.key)
    f.check(merged.select(["all_prompt_id"]).to_batches(max_chunksize=batch_rows))
    out = pa.Table.from_batches(list(f.batches(merged.to_batches(max_chunksize=batch_rows))), schema=merged.schema)
    assert out.equals(kept) and f.issues == issues and len(issues) > 10
    assert f.accounting(out.num_rows).as_dict() == acc.as_dict()
    with pytest.raises(ValueError, match=r"2 prompts are not in dedup_clusters \(e.g. 'oasst2_labelled:"):
        SurvivorFilter(mine.slice(2), spec.key).check(merged.select(["all_prompt_id"]).to_batches(max_chunksize=5))


@pytest.mark.parametrize("key", ["oasst_en", "gsm8k", "hh_rlhf_harmless_base"])
def test_dedup_and_records_stream_as_the_table_functions(tmp_path, instance, key):
    """deduplicated_prompts, sft/cot/preference_records through Dagster in 7-row batches: the same
    tables, rejects and accounting as the table functions (select_survivors, sft_from, cot_from,
    preference_from) over the whole partition."""
    from posttrain_assets.dedup.assets import deduplicated_prompts
    from posttrain_assets.dedup.duplicates import select_survivors
    from posttrain_assets.records.assets import cot_records, preference_records, sft_records
    from posttrain_assets.records.unify import cot_from, preference_from, sft_from

    from .helpers import resources_for, upstream_specs

    spec = load_registry(BUNDLED_REGISTRY).get(key)
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
    clusters = _clusters_for(merged, key, removed_every=5)
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    store.write(merged, store.path("merged_prompts", key))
    store.write(clusters, store.path("dedup_clusters", None))
    instance.add_dynamic_partitions("source", [key])
    assets = [*upstream_specs("merged_prompts"), dg.AssetSpec("dedup_clusters"), deduplicated_prompts,
              sft_records, cot_records, preference_records]
    run = {"ops": {a: {"config": {"batch_rows": 7}} for a in ("deduplicated_prompts", "sft_records", "cot_records",
                                                                "preference_records")}}
    res = dg.materialize(assets, partition_key=key, instance=instance, resources=resources_for(root, BUNDLED_REGISTRY),
                         run_config=run, selection=[deduplicated_prompts, sft_records, cot_records, preference_records])
    assert res.success and all(c.passed for c in res.get_asset_check_evaluations())
    kept, dedup_issues, _ = select_survivors(merged, clusters, key)
    expected = {"deduplicated_prompts": (kept, dedup_issues, merged.num_rows)}
    if spec.kind == "cot":
        expected["cot_records"] = (*cot_from(kept), kept.num_rows)
    if spec.kind == "sft":
        expected["sft_records"] = (*sft_from(kept), kept.num_rows)
    if spec.kind in ("sft", "preference"):
        expected["preference_records"] = (*preference_from(kept, spec.kind), kept.num_rows)
    for asset in ("deduplicated_prompts", "sft_records", "cot_records", "preference_records"):
        got = pq.read_table(f"{root}/{asset}/source={key}/data.parquet")
        rejects = pq.read_table(f"{root}/_rejects/{asset}/source={key}/data.parquet")
        md = mat_metadata(res, asset)
        if asset not in expected:
            assert got.num_rows == 0 and rejects.num_rows == 0 and md["applies"] is False
            assert (md["rows_in"], md["not_applicable_rows"]) == (0, kept.num_rows)
            continue
        table, issues, rows_in = expected[asset]
        assert got.equals(table), asset
        assert rejects.equals(rejects_table(key, asset, issues)), asset
        assert (md["rows_in"], md["rows_out"], md["dagster/row_count"]) == (rows_in, table.num_rows, table.num_rows)
        assert md["removed"] + md["rejected"] == len(issues)
        if table.num_rows > 7:  # written in row groups of (up to) the batch size
            assert pq.ParquetFile(f"{root}/{asset}/source={key}/data.parquet").num_row_groups > 1
