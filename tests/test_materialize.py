"""In-process materialisation of both ingest assets for every bundled source (real Dagster instance,
real Parquet, real DuckDB)."""

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from posttrain_assets.ingest import assets as ingest
from posttrain_assets.ingest.loaders import LoadedRows
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import SAMPLE, mat_metadata, materialize_source, resources_for, write_registry

EXPECTED = {  # source: (raw rows read, raw kept, merged rows_in, kept, removed, rejected)
    "gsm8k": (300, 300, 300, 300, 0, 0),
    "hh_rlhf_harmless_base": (300, 300, 300, 299, 0, 1),
    "awesome_chatgpt_prompts": (211, 210, 210, 210, 0, 0),
    "self_instruct": (175, 175, 175, 175, 0, 0),
    "oasst_en": (40, 40, 337, 337, 0, 0),
    "oasst2_labelled": (60, 60, 130, 129, 1, 0),
}


@pytest.fixture(scope="module")
def all_materialised(tmp_path_factory):
    """Every bundled source materialised once into one storage root and one instance."""
    root = str(tmp_path_factory.mktemp("all") / "storage")
    with dg.DagsterInstance.ephemeral() as inst:
        results = {k: materialize_source(k, inst, root, BUNDLED_REGISTRY) for k in EXPECTED}
        yield root, inst, results


@pytest.mark.parametrize("key", list(EXPECTED))
def test_every_bundled_source(all_materialised, key):
    root, _, results = all_materialised
    res = results[key]
    assert res.success
    raw, merged = mat_metadata(res, "raw_records"), mat_metadata(res, "merged_prompts")
    read, kept_raw, cand, kept, removed, rejected = EXPECTED[key]
    assert (raw["rows_in"], raw["rows_out"], raw["dagster/row_count"]) == (read, kept_raw, kept_raw)
    assert (merged["rows_in"], merged["rows_out"], merged["removed"], merged["rejected"]) == \
        (cand, kept, removed, rejected)
    assert merged["dagster/row_count"] == kept
    cols = [c.name for c in merged["dagster/column_schema"].columns]
    assert cols[:4] == ["all_prompt_id", "source", "source_prompt_id", "source_file"]
    assert "messages" in cols and "metadata" in cols
    assert merged["preview"].count("\n") == 2 + 5 - 1  # header, rule, 5 rows
    assert 0 < merged["prompt_chars_min"] <= merged["prompt_chars_p50"] <= merged["prompt_chars_max"]
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in res.get_asset_check_evaluations()}
    assert checks == {("raw_records", "row_accounting"): True, ("merged_prompts", "row_accounting"): True,
                      ("merged_prompts", "all_prompt_id_unique"): True,
                      ("merged_prompts", "required_columns"): True}
    # the Parquet file holds what the metadata says
    t = pq.read_table(f"{root}/merged_prompts/source={key}/data.parquet")
    assert t.num_rows == kept and set(t["source"].to_pylist()) == {key}


def test_duckdb_views_match_parquet(all_materialised):
    root, _, _ = all_materialised
    con = duckdb.connect(f"{root}/catalog.duckdb", read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert views == {"raw_records", "merged_prompts", "rejects"}
    for asset in ("raw_records", "merged_prompts"):
        by_view = dict(con.execute(f"SELECT source, count(*) FROM {asset} GROUP BY 1").fetchall())
        by_file = {k: pq.read_metadata(f"{root}/{asset}/source={k}/data.parquet").num_rows for k in EXPECTED}
        assert by_view == by_file
    assert dict(con.execute("SELECT source, count(*) FROM merged_prompts GROUP BY 1").fetchall()) == \
        {k: v[3] for k, v in EXPECTED.items()}
    rej = con.execute("SELECT asset, source, source_row, outcome, reason, duplicate_of FROM rejects "
                      "ORDER BY asset, source").fetchall()
    assert rej == [
        ("merged_prompts", "hh_rlhf_harmless_base", 86, "rejected", "empty_response", None),
        ("merged_prompts", "oasst2_labelled", 38, "removed", "exact_duplicate",
         "oasst2_labelled:3877d7d8-04f7-4589-9611-ccd77bc0c5d2"),
        ("raw_records", "awesome_chatgpt_prompts", 209, "rejected", "csv_extra_columns", None),
    ]
    # nested raw fields are queryable as JSON text
    (n,) = con.execute("SELECT count(*) FROM raw_records WHERE source = 'self_instruct' "
                       "AND json_array_length(instances) = 1").fetchone()
    assert n == 175
    con.close()


def test_ids_stable_across_reruns_and_after_adding_a_source(tmp_path, instance, storage_root):
    root, inst = storage_root, instance
    materialize_source("gsm8k", inst, root, BUNDLED_REGISTRY)
    before = pq.read_table(f"{root}/merged_prompts/source=gsm8k/data.parquet")["all_prompt_id"].to_pylist()
    assert before[:2] == ["gsm8k:train_300:0", "gsm8k:train_300:1"]
    # a new source listed FIRST in a new registry, then gsm8k materialised again
    import yaml

    data = yaml.safe_load(BUNDLED_REGISTRY.read_text())
    for s in data["sources"]:
        if "loader" in s:  # (the synthetic source has none)
            s["loader"]["path"] = str((BUNDLED_REGISTRY.parent / s["loader"]["path"]).resolve())
    extra = {"key": "gsm8k_again", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
             "loader": {"path": str(SAMPLE / "gsm8k" / "train_300.jsonl"), "limit": 50}}
    reg = write_registry(tmp_path / "sources.yaml", [extra] + data["sources"])
    res_new = materialize_source("gsm8k_again", inst, root, reg)
    assert mat_metadata(res_new, "merged_prompts")["rows_out"] == 50
    materialize_source("gsm8k", inst, root, reg)
    after = pq.read_table(f"{root}/merged_prompts/source=gsm8k/data.parquet")["all_prompt_id"].to_pylist()
    assert after == before
    new_ids = pq.read_table(f"{root}/merged_prompts/source=gsm8k_again/data.parquet")["all_prompt_id"].to_pylist()
    assert new_ids[0] == "gsm8k_again:train_300:0" and not set(new_ids) & set(before)


def test_normalised_exact_duplicates_removed_keep_first(tmp_path, instance, storage_root):
    import json

    rows = [json.loads(x) for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:5]]
    q, a = rows[0]["question"], rows[0]["answer"]
    variants = [
        {"question": q.upper(), "answer": a},                                  # case
        {"question": "  " + q.replace(" ", "   \n") + "\t", "answer": a},       # whitespace
        {"question": q.replace("48", "４８"), "answer": a},                      # full-width digits (NFKC)
        {"question": q.replace("April", "June"), "answer": a},                 # a real change: kept
    ]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + variants))
    reg = write_registry(tmp_path / "s.yaml", [{"key": "dups", "kind": "cot", "adapter": "gsm8k",
                                                 "loader": {"path": str(path)}, "licence": "MIT"}])
    res = materialize_source("dups", instance, storage_root, reg)
    md = mat_metadata(res, "merged_prompts")
    assert (md["rows_in"], md["rows_out"], md["removed_by_reason"]) == (9, 6, {"exact_duplicate": 3})
    t = pq.read_table(f"{storage_root}/merged_prompts/source=dups/data.parquet")
    assert t["source_row"].to_pylist() == [0, 1, 2, 3, 4, 8]
    dup_of = duckdb.sql(f"SELECT DISTINCT duplicate_of FROM '{storage_root}/_rejects/merged_prompts/"
                        "source=dups/data.parquet'").fetchall()
    assert dup_of == [("dups:g:0",)]


def test_blocking_accounting_check_stops_downstream(tmp_path, instance, storage_root, monkeypatch):
    """A loader that loses a row (rows_read > kept + rejected) fails the blocking check."""
    real = ingest.iter_rows

    def leaky(spec, out: LoadedRows, log=None, limit=None):
        rows = list(real(spec, out, log=log, limit=limit))
        return iter(rows[:-1])  # lose one row

    monkeypatch.setattr(ingest, "iter_rows", leaky)
    res = materialize_source("gsm8k", instance, storage_root, BUNDLED_REGISTRY, raise_on_error=False)
    assert not res.success
    (check,) = [c for c in res.get_asset_check_evaluations() if c.asset_key.to_user_string() == "raw_records"]
    assert not check.passed and check.metadata["unaccounted"].value == 1
    assert [e.asset_key.to_user_string() for e in res.get_asset_materialization_events()] == ["raw_records"]


@dg.asset(ins={"merged_prompts": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def all_prompts_probe(merged_prompts):
    """A fan-in consumer, the shape of the coming global dedup."""
    return merged_prompts


def test_fan_in_loads_every_partition_with_source_column(all_materialised):
    root, inst, _ = all_materialised
    res = dg.materialize([ingest.merged_prompts.to_source_asset(), all_prompts_probe], instance=inst,
                         resources=resources_for(root, BUNDLED_REGISTRY), selection=[all_prompts_probe])
    assert res.success
    t = pq.read_table(f"{root}/all_prompts_probe/data.parquet")
    assert t.num_rows == sum(v[3] for v in EXPECTED.values())
    counts = dict(duckdb.sql(f"SELECT source, count(*) FROM '{root}/all_prompts_probe/data.parquet' "
                             "GROUP BY 1").fetchall())
    assert counts == {k: v[3] for k, v in EXPECTED.items()}


def test_storage_on_an_fsspec_uri(instance):
    """The same IO path on a non-local filesystem (fsspec memory://): write, read back, no catalogue."""
    root = "memory://posttrain-test/store"
    res = materialize_source("self_instruct", instance, root, BUNDLED_REGISTRY)
    assert res.success
    store = ParquetStore(root)
    t = store.read(store.path("merged_prompts", "self_instruct"))
    assert t.num_rows == 175 and store.partitions("merged_prompts") == ["self_instruct"]
    assert store.uri(store.path("merged_prompts", "self_instruct")).startswith("memory://")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    import pyarrow as pa

    store = ParquetStore(str(tmp_path))
    path = store.path("a", "x")
    store.write(pa.table({"v": [1, 2, 3]}), path)

    def broken(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write(pa.table({"v": [9]}), path)
    monkeypatch.undo()
    assert store.read(path)["v"].to_pylist() == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "a" / "source=x").iterdir()) == ["data.parquet"]
