"""File formats and the hub path (datasets.load_dataset on a local dataset folder, offline)."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from partitions.registry import RegistryError, parse_registry
from posttrain_assets.ingest.loaders import load_rows, rows_to_table, table_to_rows

from .helpers import SAMPLE

GSM_ROWS = [json.loads(x) for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:20]]


def spec(loader, **kw):
    return parse_registry({"sources": [{"key": "s", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
                                        "loader": loader, **kw}]}).sources[0]


def test_same_rows_from_every_format(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GSM_ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": GSM_ROWS}))
    (tmp_path / "c.json").write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS))  # JSONL named .json
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in GSM_ROWS).encode()))
    pq.write_table(pa.Table.from_pylist(GSM_ROWS), tmp_path / "e.parquet")
    import csv

    with open(tmp_path / "f.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "answer"])
        w.writeheader()
        w.writerows(GSM_ROWS)
    for name in ("a.json", "b.json", "c.json", "d.jsonl.gz", "e.parquet", "f.csv"):
        loaded = load_rows(spec({"path": str(tmp_path / name)}))
        assert loaded.rows == GSM_ROWS, name
        assert loaded.source_rows == list(range(20)) and loaded.issues == []


def test_glob_limit_and_blank_lines(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text("\n".join(json.dumps(r) for r in GSM_ROWS[i * 5:(i + 1) * 5]) + "\n\n")
    loaded = load_rows(spec({"path": str(tmp_path / "part*.jsonl"), "limit": 4}))
    assert len(loaded.rows) == 12 and loaded.source_files == [f"part{i}.jsonl" for i in range(3) for _ in range(4)]
    loaded = load_rows(spec({"path": str(tmp_path / "part*.jsonl")}))
    assert (len(loaded.rows), loaded.blank_lines) == (15, 3)


def test_offset_and_limit_shard_a_source_in_every_format(tmp_path):
    """Shards of one large source (registry `offset` + `limit`, one source key each): together every
    row exactly once, in order, with the file's own row numbers; a bad row is counted by its shard
    only (rows of other shards are skipped before they are parsed)."""
    lines = [json.dumps(r) for r in GSM_ROWS]
    lines[12] = "{not json"
    (tmp_path / "c.jsonl").write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(GSM_ROWS))
    pq.write_table(pa.Table.from_pylist(GSM_ROWS), tmp_path / "e.parquet", row_group_size=4)
    import csv

    with open(tmp_path / "f.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "answer"])
        w.writeheader()
        w.writerows(GSM_ROWS)
    for name in ("c.jsonl", "a.json", "e.parquet", "f.csv"):
        shards = [load_rows(spec({"path": str(tmp_path / name), "offset": o, "limit": 7})) for o in (0, 7, 14)]
        rows = [r for s in shards for r in s.rows]
        issues = [len(s.issues) for s in shards]
        if name == "c.jsonl":  # line 13 (after a blank line) is the bad row: shard 2's, once
            assert rows == GSM_ROWS[:12] + GSM_ROWS[13:] and issues == [0, 1, 0]
            assert shards[1].issues[0].source_row == 13 and [s.rows_read for s in shards] == [7, 7, 6]
        else:
            assert rows == GSM_ROWS and issues == [0, 0, 0], name
            assert [s.source_rows for s in shards] == [list(range(0, 7)), list(range(7, 14)), list(range(14, 20))]
    assert load_rows(spec({"path": str(tmp_path / "a.json"), "offset": 30})).rows == []  # past the end: empty
    with pytest.raises(RegistryError, match="loader.offset.*non-negative integer, got -1"):
        spec({"path": str(tmp_path / "a.json"), "offset": -1})


def test_hub_loader_is_datasets_load_dataset(tmp_path):
    """The hub path is `datasets.load_dataset(id, config, split=...)`; a local dataset folder is a
    valid id offline, so the real call runs here."""
    folder = tmp_path / "gsm_hub" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM_ROWS), folder / "train-00000-of-00001.parquet")
    loaded = load_rows(spec({"hub": str(tmp_path / "gsm_hub"), "split": "train"}))
    assert loaded.rows == GSM_ROWS and loaded.files == [str(tmp_path / "gsm_hub")]
    shard = load_rows(spec({"hub": str(tmp_path / "gsm_hub"), "split": "train", "offset": 15, "limit": 10}))
    assert shard.rows == GSM_ROWS[15:] and shard.source_rows == list(range(15, 20))


def test_raw_table_round_trip_keeps_nested_and_mixed_values():
    rows = [{"a": 1, "b": {"x": [1, 2]}, "c": "t", "d": 1, "source_row": "clash"},
            {"a": 2, "b": None, "c": None, "d": "one", "e": True}]
    from posttrain_assets.ingest.loaders import LoadedRows

    loaded = LoadedRows(rows=rows, source_files=["f", "f"], source_rows=[0, 1])
    t = rows_to_table(loaded)
    assert t.schema.field("a").type == pa.int64() and t.schema.field("b").type == pa.string()
    assert t.column_names == ["source_file", "source_row", "a", "b", "c", "d", "source_row_raw", "e"]
    back = [r for _, _, r in table_to_rows(t)]
    assert back[0] == {"a": 1, "b": {"x": [1, 2]}, "c": "t", "d": 1, "source_row": "clash", "e": None}
    assert back[1]["d"] == "one" and back[1]["b"] is None and back[1]["e"] is True
