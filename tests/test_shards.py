"""Shards by declaration (registry `shard_rows` / `shards`): one entry, `<key>.sNNNN` partitions, each
reading only its rows; together every row once; growth adds shards; a changed file fails clearly."""

import csv
import gzip
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from partitions import plan_sync
from partitions.__main__ import main as cli_main
from partitions.registry import RegistryError, load_registry, parse_registry
from partitions.shards import (RowFingerprint, changed_under_shard, file_pieces, parse_shard_key,
                               shard_key)
from posttrain_assets.export.assets import source_mask
from posttrain_assets.ingest.loaders import load_rows
from posttrain_assets.sensors import sources_registry_sensor
from resources.sources import SourceRegistryResource

from .conftest import SHARED_DATA, needs_shared
from .helpers import SAMPLE, mat_metadata, materialize_source, step_error, write_registry

GSM_300 = SAMPLE / "gsm8k" / "train_300.jsonl"
GSM_LINES = GSM_300.read_text().splitlines()
GSM_ROWS = [json.loads(x) for x in GSM_LINES]


def entry(key="gsm", loader=None, **kw):
    return {"key": key, "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
            "loader": loader or {"path": str(GSM_300)}, **kw}


def registry(*entries, where="reg.yaml"):
    return parse_registry({"sources": list(entries)}, where=where)


# ------------------------------------------------------------------------ keys and the registry


def test_shard_key_format_and_parse():
    assert shard_key("openmathreasoning", 3) == "openmathreasoning.s0003"
    assert shard_key("x", 12_345) == "x.s12345"  # past 9,999: 5 digits, the 4-digit keys never change
    assert parse_shard_key("openmathreasoning.s0003") == ("openmathreasoning", 3)
    assert parse_shard_key("a.b.s0010") == ("a.b", 10)
    for not_a_shard in ("gsm8k", "x.s003", "x.s00003", "x.s123456", "x.t0001"):
        assert parse_shard_key(not_a_shard) is None, not_a_shard


def test_registry_keys_are_shard_keys_and_get_resolves_a_shard():
    reg = registry(entry(shard_rows=128), entry("plain"))
    assert reg.source_keys == ["gsm", "plain"]
    assert reg.keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002", "plain"]  # 300 rows: 128 + 128 + 44
    spec = reg.get("gsm.s0002")
    assert (spec.key, spec.source_key, spec.shard.start, spec.shard.stop) == ("gsm.s0002", "gsm", 256, 384)
    assert (spec.kind, spec.adapter, spec.licence, spec.column("prompt")) == ("cot", "gsm8k", "MIT", "question")
    assert reg.get("gsm").shard is None and reg.get("gsm").sharded
    assert reg.get("gsm").shard_layout() == (300, 128, 3)
    assert reg.parent_of("gsm.s0001") == "gsm" and reg.parent_of("plain") == "plain"
    with pytest.raises(RegistryError, match="source 'plain' is not sharded .* no shard 'plain.s0000'"):
        reg.get("plain.s0000")
    with pytest.raises(RegistryError, match="unknown source key 'gsm.s00001'; the registry has: gsm, plain"):
        reg.get("gsm.s00001")
    assert reg.find("nope.s0000") is None
    # shards: N -> ceil(rows / N) rows each; an index past the count is an error at once
    fixed = registry(entry(shards=7))
    assert fixed.get("gsm").shard_layout() == (300, 43, 7)
    assert fixed.keys[-1] == "gsm.s0006" and fixed.get("gsm.s0006").shard.start == 258
    with pytest.raises(RegistryError, match=r"shard 'gsm.s0007' does not exist: 300 rows in 7 shards of 43"):
        fixed.get("gsm.s0007")


@pytest.mark.parametrize("patch, field, words", [
    ({"shard_rows": 0}, "shard_rows", "must be a positive integer, got 0"),
    ({"shards": True}, "shards", "must be a positive integer, got True"),
    ({"shard_rows": 10, "shards": 2}, "shards", "give shard_rows or shards, not both"),
    ({"shards": 100_001}, "shards", "at most 100,000"),
    ({"shard_rows": 10, "loader": {"path": "x.jsonl", "offset": 5}}, "loader.offset", "not with shard_rows"),
    ({"shards": 3, "loader": {"path": "x.jsonl", "limit": 5}}, "loader.limit", "not with shards"),
    ({"key": "a" * 60, "shard_rows": 10}, "key", "too long for a sharded source"),
    ({"key": "gsm.s0001"}, "key", "reserved for the partitions of a sharded source"),
    ({"adapter": "oasst_messages", "kind": "sft", "shard_rows": 100}, "shard_rows",
     "rebuilds message trees across the whole file: its rows cannot be sharded"),
])
def test_bad_shard_declarations_name_source_and_field(patch, field, words):
    e = entry(**{k: v for k, v in patch.items() if k != "key"})
    if "key" in patch:
        e["key"] = patch["key"]
    with pytest.raises(RegistryError) as err:
        registry(e)
    assert f"source '{e['key']}': field '{field}': " in str(err.value) and words in str(err.value), str(err.value)


def test_synthetic_source_cannot_be_sharded():
    with pytest.raises(RegistryError, match="source 'm': field 'shard_rows': a synthetic source has no shard_rows"):
        registry({"key": "m", "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
                  "generator_config": {"total_prompts": 4}, "shard_rows": 2})


def test_more_than_100k_partitions_is_a_registry_error(tmp_path):
    # 100,001 real-shaped rows in Parquet (the footer gives the count; nothing else is read)
    pq.write_table(pa.table({"question": ["q"] * 100_001, "answer": ["a #### 1"] * 100_001}), tmp_path / "big.parquet")
    reg = registry(entry("big", {"path": str(tmp_path / "big.parquet")}, shard_rows=1), entry("plain"))
    with pytest.raises(RegistryError, match=r"reg.yaml: 100,002 source partitions, more than Dagster's 100,000 "
                                            r"per asset; largest: big \(100,001\), plain \(1\): raise their shard_rows"):
        reg.keys  # noqa: B018
    assert registry(entry("big", {"path": str(tmp_path / "big.parquet")}, shard_rows=2)).keys[-1] == "big.s50000"


# ------------------------------------------------------------------------ each shard reads its rows


def test_file_pieces_cross_file_boundaries_and_count_only_what_they_need():
    asked = []

    def count(i):
        asked.append(i)
        return [5, 0, 7, 100][i]

    assert file_pieces(4, count, 3, 9) == [(0, 3, 2), (2, 0, 4)]
    assert asked == [0, 1, 2]  # not the last file, not the files after the range
    asked.clear()
    assert file_pieces(4, count, 12, 20) == [(3, 0, 8)] and asked == [0, 1, 2]
    assert file_pieces(1, count, 0, 10) == [(0, 0, 10)]


def write_formats(tmp_path: Path) -> dict[str, Path]:
    """The first 300 real GSM8K train rows in every format; the JSONL one has a blank line and a
    malformed line (row 57), spread over three files."""
    lines = list(GSM_LINES)
    lines[57] = '{"question": "cut off'
    d = tmp_path / "jsonl"
    d.mkdir()
    (d / "part-0.jsonl").write_text("\n".join(lines[:100]) + "\n")
    (d / "part-1.jsonl").write_text("\n".join(lines[100:110]) + "\n\n" + "\n".join(lines[110:230]) + "\n")
    (d / "part-2.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[230:]) + "\n").encode()))
    pq.write_table(pa.Table.from_pylist(GSM_ROWS), tmp_path / "gsm.parquet", row_group_size=16)
    (tmp_path / "gsm.json").write_text(json.dumps(GSM_ROWS))
    with open(tmp_path / "gsm.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "answer"])
        w.writeheader()
        w.writerows(GSM_ROWS)
    return {"jsonl": d / "part-*", "parquet": tmp_path / "gsm.parquet", "json": tmp_path / "gsm.json",
            "csv": tmp_path / "gsm.csv"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "json", "csv"])
def test_shards_cover_every_row_exactly_once(tmp_path, fmt):
    path = write_formats(tmp_path)[fmt]
    reg = registry(entry(loader={"path": str(path)}, shard_rows=47))
    assert reg.get("gsm").shard_layout() == (300, 47, 7)
    shards = [load_rows(reg.get(k)) for k in reg.keys]
    assert reg.keys == [f"gsm.s{i:04d}" for i in range(7)]
    rows = [r for s in shards for r in s.rows]
    ids = [(f, r) for s in shards for f, r in zip(s.source_files, s.source_rows)]
    assert len(ids) == len(set(ids))  # (file, row) unique across shards
    assert [s.rows_read for s in shards] == [47] * 6 + [18]
    issues = [i for s in shards for i in s.issues]
    if fmt == "jsonl":
        assert rows == GSM_ROWS[:57] + GSM_ROWS[58:]
        # the bad row is counted once, by the shard whose range holds it (rows 47..93)
        assert [len(s.issues) for s in shards] == [0, 1, 0, 0, 0, 0, 0]
        assert (issues[0].reason, issues[0].source_file, issues[0].source_row) == ("malformed_json", "part-0.jsonl", 57)
        # shard 2 (rows 94..140) straddles part-0 and part-1, whose blank line (line 10) is not a row:
        # the file's row numbers are its line numbers
        assert shards[2].files == [str(path.parent / "part-0.jsonl"), str(path.parent / "part-1.jsonl")]
        assert shards[2].source_rows[:7] == [94, 95, 96, 97, 98, 99, 0] and 10 not in shards[2].source_rows
        assert shards[2].source_rows[15:17] == [9, 11] and [s.blank_lines for s in shards] == [0, 0, 1, 0, 0, 0, 0]
        assert shards[4].source_files[-1] == "part-2.jsonl.gz"  # rows 188..234: into the .gz file
    else:
        assert rows == GSM_ROWS and issues == []
        assert [r for s in shards for r in s.source_rows] == list(range(300))


def test_a_parquet_shard_reads_only_its_row_groups(tmp_path, monkeypatch):
    path = write_formats(tmp_path)["parquet"]  # row groups of 16 rows
    asked = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        asked.append(kw.get("row_groups"))
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    reg = registry(entry(loader={"path": str(path)}, shard_rows=40))
    loaded = load_rows(reg.get("gsm.s0002"))  # rows 80..119: groups 5 (80..95), 6, 7 (112..127)
    assert asked == [[5, 6, 7]]
    assert loaded.rows == GSM_ROWS[80:120] and loaded.source_rows == list(range(80, 120))
    assert load_rows(reg.get("gsm.s0002"), limit=5).source_rows == [80, 81, 82, 83, 84]  # a test run's limit
    assert asked[-1] == [5]


@needs_shared
def test_the_real_gsm8k_train_file_in_shards():
    """7,473 real rows in 1,000-row shards: eight keys, the last one partial, every row once."""
    reg = registry(entry("gsm8k", {"path": str(SHARED_DATA / "gsm8k" / "train.jsonl")}, shard_rows=1000))
    assert reg.keys == [f"gsm8k.s{i:04d}" for i in range(8)]
    loaded = [load_rows(reg.get(k)) for k in reg.keys]
    assert [len(x.rows) for x in loaded] == [1000] * 7 + [473]
    assert [r for x in loaded for r in x.source_rows] == list(range(7473))
    assert loaded[7].rows[-1] == json.loads((SHARED_DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[-1])


def test_a_hub_shard_is_a_split_slice(tmp_path):
    folder = tmp_path / "gsm_hub" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM_ROWS[:20]), folder / "train-00000-of-00001.parquet")
    reg = registry(entry(loader={"hub": str(tmp_path / "gsm_hub"), "split": "train"}, shard_rows=8))
    assert reg.keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002"]
    shards = [load_rows(reg.get(k)) for k in reg.keys]
    assert [s.source_rows for s in shards] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert [r for s in shards for r in s.rows] == GSM_ROWS[:20]


# ------------------------------------------------------------------------ growth and changed files


def test_fingerprint_accepts_appended_rows_and_names_a_changed_file():
    before = RowFingerprint()
    for line in GSM_LINES[:10]:
        before.add(line.encode())
    seen = {"shard_rows_read": 10, "shard_fingerprint": before.hexdigest()}
    grown = RowFingerprint(prefix_at=10)
    for line in GSM_LINES[:15]:
        grown.add(line.encode())
    assert changed_under_shard("g.s0001", ["/d/a.jsonl"], seen, grown) is None
    edited = RowFingerprint(prefix_at=10)
    for line in GSM_LINES[:3] + ["{}"] + GSM_LINES[4:15]:
        edited.add(line.encode())
    why = changed_under_shard("g.s0001", ["/d/a.jsonl"], seen, edited)
    assert why.startswith("shard 'g.s0001': a.jsonl changed under the shard: its first 10 rows differ")
    short = RowFingerprint(prefix_at=10)
    for line in GSM_LINES[:4]:
        short.add(line.encode())
    assert "it read 10 rows when it was materialised before, 4 now" in changed_under_shard("g.s0001", ["a"], seen, short)
    assert changed_under_shard("g.s0001", ["a"], None, short) is None  # never materialised: nothing to compare


def test_appending_rows_adds_shards_and_a_changed_file_fails(tmp_path):
    """Materialised shards of a growing JSONL file: appended rows add shards (old keys keep their rows;
    the partial last shard re-materialises with its new rows); an edited row in a materialised
    shard's range fails that shard clearly; a file cut short leaves a shard past the end."""
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(GSM_LINES[:250]) + "\n")
    reg_path = write_registry(tmp_path / "reg.yaml", [entry("gsm", {"path": str(data)}, shard_rows=100)])
    root = str(tmp_path / "storage")
    with dg.DagsterInstance.ephemeral() as inst:
        keys = load_registry(reg_path).keys
        assert keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002"]
        inst.add_dynamic_partitions("source", keys)
        merged, fingerprints = {}, {}
        for k in keys:
            res = materialize_source(k, inst, root, reg_path)
            raw, m = mat_metadata(res, "raw_records"), mat_metadata(res, "merged_prompts")
            assert (raw["source"], raw["shard_range"], raw["shard_rows_read"]) == \
                ("gsm", f"[{keys.index(k) * 100}, {keys.index(k) * 100 + 100})", [100, 100, 50][keys.index(k)])
            fingerprints[k] = raw["shard_fingerprint"]
            merged[k] = pq.read_table(f"{root}/merged_prompts/source={k}/data.parquet")
        ids = [i for t in merged.values() for i in t["all_prompt_id"].to_pylist()]
        assert len(ids) == 250 == len(set(ids))  # unique across shards
        assert merged["gsm.s0001"]["all_prompt_id"].to_pylist()[0] == "gsm.s0001:gsm:100"
        assert set(merged["gsm.s0002"]["source"].to_pylist()) == {"gsm.s0002"}

        # 120 rows appended: one new shard; the sync adds only it; old keys keep their rows
        with open(data, "a") as fh:
            fh.write("\n".join(GSM_LINES[250:300] + GSM_LINES[:70]) + "\n")
        reg = load_registry(reg_path)
        assert reg.keys == keys + ["gsm.s0003"]
        plan = plan_sync(inst.get_dynamic_partitions("source"), reg)
        assert (plan.added, plan.orphaned) == (["gsm.s0003"], [])
        again = materialize_source("gsm.s0000", inst, root, reg_path)
        assert mat_metadata(again, "raw_records")["shard_fingerprint"] == fingerprints["gsm.s0000"]
        grown = materialize_source("gsm.s0002", inst, root, reg_path)  # the partial shard: 50 -> 100 rows
        assert mat_metadata(grown, "raw_records")["shard_rows_read"] == 100
        new = materialize_source("gsm.s0003", inst, root, reg_path)
        assert mat_metadata(new, "raw_records")["shard_rows_read"] == 70

        # a row of shard 1 edited in place: shard 1 fails, naming source, shard and file
        lines = data.read_text().splitlines()
        lines[150] = json.dumps({"question": "edited", "answer": "#### 1"})
        data.write_text("\n".join(lines) + "\n")
        bad = materialize_source("gsm.s0001", inst, root, reg_path, raise_on_error=False)
        assert not bad.success
        assert step_error(bad).startswith(
            "source 'gsm': shard 'gsm.s0001': gsm.jsonl changed under the shard: its first 100 rows differ "
            "from those materialised before")
        ok = materialize_source("gsm.s0001", inst, root, reg_path,
                                run_config={"ops": {"raw_records": {"config": {"accept_changed_file": True}}}})
        assert ok.success
        # the file cut to 250 rows: shard 3 is past the end, shard 2 reads fewer rows than before
        data.write_text("\n".join(lines[:250]) + "\n")
        gone = materialize_source("gsm.s0003", inst, root, reg_path, raise_on_error=False)
        assert "shard 'gsm.s0003' (rows 300 to 399) is past the end of the source's rows" in step_error(gone)
        cut = materialize_source("gsm.s0002", inst, root, reg_path, raise_on_error=False)
        assert "shard 'gsm.s0002': gsm.jsonl changed under the shard: it read 100 rows when it was " \
               "materialised before, 50 now" in step_error(cut)


def test_a_bad_row_is_rejected_by_one_shard_in_dagster(tmp_path):
    paths = write_formats(tmp_path)
    reg_path = write_registry(tmp_path / "reg.yaml", [entry("gsm", {"path": str(paths["jsonl"])}, shard_rows=120),
                                                      entry("gsmpq", {"path": str(paths["parquet"])}, shards=2)])
    root = str(tmp_path / "storage")
    with dg.DagsterInstance.ephemeral() as inst:
        keys = load_registry(reg_path).keys
        assert keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002", "gsmpq.s0000", "gsmpq.s0001"]
        raw = {k: mat_metadata(materialize_source(k, inst, root, reg_path), "raw_records") for k in keys}
    assert [(raw[k]["rows_in"], raw[k]["rows_out"], raw[k]["rejected"]) for k in keys] == \
        [(120, 119, 1), (120, 120, 0), (60, 60, 0), (150, 150, 0), (150, 150, 0)]


# ------------------------------------------------------------------------ sync, CLI, global stages


def test_sensor_and_cli_add_and_print_shard_keys(instance, tmp_path, capsys):
    reg_path = write_registry(tmp_path / "reg.yaml", [entry(shard_rows=100), entry("plain")])
    ctx = dg.build_sensor_context(instance=instance, resources={"registry": SourceRegistryResource(path=str(reg_path))})
    result = sources_registry_sensor(ctx)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["gsm.s0000", "gsm.s0001", "gsm.s0002", "plain"]
    assert cli_main(["shards", "gsm", "--registry", str(reg_path)]) == 0
    assert capsys.readouterr().out.split() == ["gsm.s0000", "gsm.s0001", "gsm.s0002"]
    assert cli_main(["shards", "gsm", "--range", "--registry", str(reg_path)]) == 0
    assert capsys.readouterr().out.strip() == "[gsm.s0000...gsm.s0002]"
    assert cli_main(["validate", "--registry", str(reg_path)]) == 0
    out = capsys.readouterr().out
    assert "(300 rows: 3 shards of 100, gsm.s0000 ..)" in out and out.strip().endswith("4 partitions; 2 sources, valid")
    # a sharded source whose file is gone: the sensor skips with the reason, adds nothing
    missing = write_registry(tmp_path / "gone.yaml", [entry(loader={"path": str(tmp_path / "gone.jsonl")}, shard_rows=5)])
    skip = sources_registry_sensor(dg.build_sensor_context(
        instance=instance, resources={"registry": SourceRegistryResource(path=str(missing))}))
    assert isinstance(skip, dg.SkipReason) and "field 'loader.path': no file matches" in skip.skip_message


def test_global_stages_map_shards_to_their_source():
    reg = registry(entry(shard_rows=100, priority=7), entry("gsm.sft", priority=9))
    specs = reg.specs_for(["gsm.s0001", "gsm.s0002", "gsm.sft", "retired"])
    assert {k: s.priority for k, s in specs.items()} == {"gsm": 7, "gsm.s0001": 7, "gsm.s0002": 7, "gsm.sft": 9}
    col = pa.chunked_array([["gsm.s0000", "gsm.s0001", "gsm.sft", "gsm", "gsm.s00001"]])
    assert source_mask(col, reg.get("gsm")).to_pylist() == [True, True, False, False, False]
    assert source_mask(col, reg.get("gsm.sft")).to_pylist() == [False, False, True, False, False]


def test_the_global_dedup_sees_every_shard(tmp_path):
    """Three shards through ingest and embeddings, then the global dedup_clusters (fan-in over every
    `source` partition) and deduplicated_prompts per shard: a row of shard 2 that repeats a row of
    shard 0 is removed with the shard-0 row as its representative; every row is accounted for."""
    from posttrain_assets.dedup.assets import dedup_clusters, deduplicated_prompts, prompt_embeddings
    from posttrain_assets.ingest.assets import merged_prompts, raw_records

    from .helpers import resources_for, upstream_specs

    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(GSM_LINES + [GSM_LINES[5]]) + "\n")  # row 300 repeats row 5
    reg_path = write_registry(tmp_path / "reg.yaml", [entry("gsm", {"path": str(data)}, shard_rows=128)])
    root = str(tmp_path / "storage")
    resources = resources_for(root, reg_path)
    with dg.DagsterInstance.ephemeral() as inst:
        keys = load_registry(reg_path).keys
        assert keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002"]
        for k in keys:
            materialize_source(k, inst, root, reg_path, assets=[raw_records, merged_prompts, prompt_embeddings])
        res = dg.materialize(upstream_specs("merged_prompts", "prompt_embeddings") + [dedup_clusters],
                             selection=[dedup_clusters], instance=inst, resources=resources)
        md = mat_metadata(res, "dedup_clusters")
        assert md["rows_in"] == 301 and md["rows_in"] == md["rows_out"] + md["removed"]
        summary = {r["source"]: r for r in pq.read_table(f"{root}/dedup_summary/data.parquet").to_pylist()}
        assert {k: summary[k]["before"] for k in keys} == {"gsm.s0000": 128, "gsm.s0001": 128, "gsm.s0002": 45}
        kept = {}
        for k in keys:
            r = dg.materialize(upstream_specs("merged_prompts") + [dg.AssetSpec("dedup_clusters"), deduplicated_prompts],
                               selection=[deduplicated_prompts], partition_key=k, instance=inst, resources=resources)
            m = mat_metadata(r, "deduplicated_prompts")
            assert m["rows_in"] == m["rows_out"] + m["removed"]
            kept[k] = pq.read_table(f"{root}/deduplicated_prompts/source={k}/data.parquet")["all_prompt_id"].to_pylist()
    clusters = pq.read_table(f"{root}/dedup_clusters/data.parquet").to_pylist()
    planted = next(c for c in clusters if c["all_prompt_id"] == "gsm.s0002:gsm:300")
    assert (planted["keep"], planted["representative_id"], planted["match"]) == (False, "gsm.s0000:gsm:5", "exact")
    assert "gsm.s0000:gsm:5" in kept["gsm.s0000"] and "gsm.s0002:gsm:300" not in kept["gsm.s0002"]
    assert sum(len(v) for v in kept.values()) == sum(c["keep"] for c in clusters)


def test_a_fixed_shard_count_moves_every_range_when_the_file_grows(tmp_path):
    """`shards: N` sizes shards from the row count: rows added move every later shard's range, so a
    shard materialised before no longer matches (its first rows differ) -- unlike `shard_rows`."""
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(GSM_LINES[:90]) + "\n")
    reg = registry(entry(loader={"path": str(data)}, shards=3))
    before = load_rows(reg.get("gsm.s0001"))
    assert (reg.get("gsm.s0001").shard.start, before.source_rows[0]) == (30, 30)
    seen = {"shard_rows_read": before.fingerprint.rows, "shard_fingerprint": before.fingerprint.hexdigest()}
    with open(data, "a") as fh:
        fh.write("\n".join(GSM_LINES[90:120]) + "\n")
    reg = registry(entry(loader={"path": str(data)}, shards=3))
    assert reg.keys == ["gsm.s0000", "gsm.s0001", "gsm.s0002"] and reg.get("gsm.s0001").shard.start == 40
    now = load_rows(reg.get("gsm.s0001"), fingerprint=RowFingerprint(prefix_at=30))
    assert "its first 30 rows differ from those materialised before" in changed_under_shard(
        "gsm.s0001", now.files, seen, now.fingerprint)
