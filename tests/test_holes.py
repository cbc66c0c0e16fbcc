"""Holes a security review found (issue 21), each reproduced: every test here failed before its fix."""

import gzip
import json

import pytest

from partitions.registry import RegistryError, parse_registry
from posttrain_assets.ingest.loaders import LoadedRows, SourceLoadError, iter_rows, load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from resources.storage import ParquetStore, UnsafePartitionKeyError, check_partition_key


def _spec(path: str, **loader):
    entry = {"key": "s", "kind": "prompt", "adapter": "generic", "fields": {"prompt": "p"}, "licence": "MIT",
             "loader": {"path": path, **loader}}
    return parse_registry({"sources": [entry]}).sources[0]


@pytest.mark.parametrize("key", ["g/../../../other/x", "../x", "a/b", "..", "A", "x" * 65, ""])
def test_a_partition_key_cannot_name_a_path_outside_the_storage(tmp_path, key):
    """Dagster takes `g/../../../other/x` as a dynamic partition key; the store joined it raw and a file
    outside the root was read and overwritten."""
    store = ParquetStore(str(tmp_path / "storage"))
    with pytest.raises(UnsafePartitionKeyError, match="is not a source key"):
        store.path("merged_prompts", key)
    with pytest.raises(UnsafePartitionKeyError):
        store.rejects_path("merged_prompts", key)


def test_source_and_shard_keys_still_name_their_files(tmp_path):
    store = ParquetStore(str(tmp_path / "storage"))
    for key in ("gsm8k", "openr1_math", "big.s0003", "a-b.c"):
        assert check_partition_key(key) == key
        assert store.path("raw_records", key) == f"{store.base}/raw_records/source={key}/data.parquet"
    with pytest.raises(UnsafePartitionKeyError, match="leaves the storage root"):
        store.path("../elsewhere", None)


def test_a_truncated_gzip_names_its_source_and_file(tmp_path):
    rows = b"".join(json.dumps({"p": f"prompt {i} " * 20}).encode() + b"\n" for i in range(2000))
    data = gzip.compress(rows)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceLoadError) as err:
        load_rows(_spec(str(tmp_path / "cut.jsonl.gz")))
    assert str(err.value).startswith("source 's': cannot read cut.jsonl.gz: EOFError")
    (tmp_path / "bad.jsonl.gz").write_bytes(data[:10] + b"\x00" * 64 + data[74:])
    with pytest.raises(SourceLoadError, match=r"source 's': cannot read bad.jsonl.gz: (BadGzipFile|error)"):
        load_rows(_spec(str(tmp_path / "bad.jsonl.gz")))


def test_an_expanded_variable_never_reaches_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_TOKEN_DIR", str(tmp_path / "s3cr3t-token"))
    with pytest.raises(RegistryError) as err:
        _spec("$DATA_TOKEN_DIR/*.jsonl").resolved_paths()
    assert "s3cr3t" not in str(err.value)
    assert "no file matches '$DATA_TOKEN_DIR/*.jsonl' after expanding $VARS and ~" in str(err.value)


def test_nan_infinity_and_overflow_are_counted_rejects_and_metadata_stays_json(tmp_path):
    lines = ['{"p": "ok", "score": 0.5}', '{"p": "a", "score": NaN}', '{"p": "b", "x": [1, Infinity]}',
             '{"p": "c", "score": -Infinity}', '{"p": "d", "score": 1e400}', '{"p": "fine", "big": 1e300}']
    (tmp_path / "n.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "n.json").write_text("[" + ", ".join(lines) + "]")
    for name in ("n.jsonl", "n.json"):
        spec = _spec(str(tmp_path / name))
        loaded = load_rows(spec)
        assert [(i.source_row, i.reason, i.field) for i in loaded.issues] == [
            (1, "non_finite_number", "score"), (2, "non_finite_number", "x[1]"),
            (3, "non_finite_number", "score"), (4, "non_finite_number", "score")]
        assert loaded.issues[0].detail.startswith("NaN is not a JSON number")
        assert "1e400" in loaded.issues[3].detail and loaded.rows_read == 6
        res = merge_prompts(rows_to_table(loaded), spec)
        assert res.table["prompt"].to_pylist() == ["ok", "fine"]
        for m in res.table["metadata"].to_pylist():
            json.loads(m, parse_constant=lambda c: pytest.fail(f"{c} in metadata"))


def test_a_row_over_max_row_bytes_is_a_reject_never_parsed(tmp_path):
    (tmp_path / "big.jsonl").write_text(json.dumps({"p": "x" * 5000}) + "\n" + json.dumps({"p": "small"}) + "\n")
    out = LoadedRows(max_row_bytes=1000)
    rows = list(iter_rows(_spec(str(tmp_path / "big.jsonl")), out))
    assert [r[2]["p"] for r in rows] == ["small"] and out.rows_read == 2
    assert [(i.source_row, i.reason) for i in out.issues] == [(0, "row_too_large")]
    assert "5,010 bytes > max_row_bytes=1,000" in out.issues[0].detail
