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


def test_an_empty_or_shrunken_export_is_not_published(tmp_path, instance, monkeypatch):
    """An empty export planned the deletion of every data file on the Hub. The Hub cannot be reached
    here: a recording stand-in for HfApi lists a repo with sft and preference shards and records commits."""
    import dagster as dg
    import huggingface_hub
    from huggingface_hub.hf_api import RepoFile

    from posttrain_assets.export.assets import hf_parquet
    from posttrain_assets.records.unify import COT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA
    from resources.hub import HubResource, RemoteFile, shrink_reason

    from .helpers import no_contamination, resources_for

    remote = ["data/sft/train-00000-of-00001.parquet", "data/preference/train-00000-of-00001.parquet", "README.md"]
    assert shrink_reason(["README.md"], [RemoteFile(p) for p in remote]) == \
        "the export is empty: publishing it would delete the repo's 2 data files"
    assert shrink_reason(["data/sft/train-00000-of-00002.parquet"], [RemoteFile(p) for p in remote]) == \
        "the export has no preference config: publishing it would delete 1 data files of the repo"
    assert shrink_reason(["data/sft/a.parquet", "data/preference/b.parquet"], [RemoteFile(p) for p in remote]) is None
    assert shrink_reason([], []) is None  # a new repo

    commits = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def list_repo_tree(self, repo_id, **kw):
            return [RepoFile(path=p, size=1, blob_id="0" * 40, lfs=None, oid="x") for p in remote]

        def create_repo(self, repo_id, **kw):
            pass

        def create_commit(self, repo_id, operations, **kw):
            commits.append(sorted((type(o).__name__, o.path_in_repo) for o in operations))
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    for asset, schema in (("sft_records", SFT_SCHEMA), ("cot_records", COT_SCHEMA), ("preference_records", PREFERENCE_SCHEMA)):
        store.write(schema.empty_table(), store.path(asset, "empty"))
    no_contamination(store, ["empty"])
    reg = tmp_path / "s.yaml"
    reg.write_text(json.dumps({"sources": [{"key": "empty", "kind": "prompt", "adapter": "generic", "licence": "MIT",
                                           "fields": {"prompt": "p"}, "loader": {"path": str(reg)}}]}))
    instance.add_dynamic_partitions("source", ["empty"])
    upstream = [dg.AssetSpec(k, partitions_def=dg.DynamicPartitionsDefinition(name="source"))
                for k in ("sft_records", "cot_records", "preference_records", "contamination")]
    resources = {**resources_for(root, reg), "hub": HubResource(repo_id="me/ds", token="hf_x")}
    res = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance, resources=resources,
                         raise_on_error=False)
    assert not res.success and commits == []
    failure = res.get_step_failure_events()[0].event_specific_data.error.message
    assert "hub me/ds: not published: the export is empty: publishing it would delete the repo's 2 data files" in failure
    res = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance, resources=resources,
                         run_config={"ops": {"hf_parquet": {"config": {"allow_shrink": True}}}})
    assert res.success and commits == [[("CommitOperationAdd", "README.md"),
                                        ("CommitOperationDelete", "data/preference/train-00000-of-00001.parquet"),
                                        ("CommitOperationDelete", "data/sft/train-00000-of-00001.parquet")]]


def test_an_artifact_manifest_cannot_write_or_read_outside_its_folder(tmp_path):
    """A LoRA manifest's `files` were joined raw (a manifest wrote outside its folder); LATEST's version
    was joined raw into the artifact folder."""
    from posttrain_assets.steerlm import model as am

    store = ParquetStore(str(tmp_path / "storage"))
    folder = am.artifact_dir(store.base, "0123456789abcdef")
    for bad in ("../../outside.txt", "/etc/passwd", "a/../../b", "", "C:/x"):
        store.write_bytes(f"{folder}/{am.MANIFEST}", json.dumps({"version": "0123456789abcdef", "backend": "lora",
                                                                  "files": [bad]}).encode())
        with pytest.raises(am.AttributeModelError, match="is not a path inside the artifact folder"):
            am.load(store, folder)
    assert not (tmp_path / "outside.txt").exists()
    assert am.safe_relative("adapter/adapter_model.safetensors", "f") == "adapter/adapter_model.safetensors"
    for version in ("../../../tmp/x", "a/b", ".hidden", ""):
        with pytest.raises(am.AttributeModelError, match="is not a version name"):
            am.artifact_dir(store.base, version)


def test_a_corrupt_llm_cache_is_moved_aside_and_a_locked_one_is_named(tmp_path):
    """Both gave a bare sqlite3 error (the locked one after 60 s) naming no file."""
    import sqlite3

    from resources.llm.cache import LLMCache, LLMCacheError

    path = tmp_path / "cache" / "llm.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"this is not a database" * 100)
    cache = LLMCache(str(path))
    assert cache.moved_aside and (tmp_path / "cache" / cache.moved_aside.rsplit("/", 1)[1]).read_bytes().startswith(b"this is")
    cache.put_many([("k", "op", "m", {"text": "answer"})])
    assert cache.get_many(["k"]) == {"k": {"text": "answer"}} and cache.count() == 1
    cache.close()

    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write, for as long as this test runs
    cache = LLMCache(str(path), timeout=0.05)  # WAL: reading goes on
    assert cache.get_many(["k"]) == {"k": {"text": "answer"}}
    with pytest.raises(LLMCacheError) as err:
        cache.put_many([("k2", "op", "m", {"text": "b"})])
    assert str(err.value).startswith(f"LLM cache {path} is locked by another process (waited 0.05 s")
    holder.execute("ROLLBACK")
    holder.close()
    assert LLMCache(str(path)).get_many(["k"]) == {"k": {"text": "answer"}}


def test_credentials_in_a_server_url_stay_out_of_settings_rows_and_errors(monkeypatch):
    """An openai base_url with user:password@ or ?api_key= was kept in the backend's settings (the cache
    key, every model's metadata), the Magpie rows' configs and the errors in the event log."""
    from posttrain_assets.magpie.generation import model_identity
    from resources.embeddings import EmbeddingClient, EmbeddingError
    from resources.llm.base import LLMError
    from resources.secrets import redact_url
    from resources.llm.openai_backend import OpenAIBackend
    from resources.llm.resource import ModelSpec

    url = "http://bob:pa55word@127.0.0.1:9/v1?api_key=s3cret&region=eu"
    assert redact_url(url) == "http://***@127.0.0.1:9/v1?api_key=***&region=eu"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"  # cache keys of plain URLs kept
    spec = ModelSpec(name="m", backend="openai", model="served", base_url=url)
    backend = OpenAIBackend(spec, api_key=None, max_concurrency=1, timeout_s=0.5, max_retries=1)
    assert "pa55word" not in json.dumps(backend.settings()) and "s3cret" not in json.dumps(backend.settings())
    assert model_identity(spec)["base_url"] == redact_url(url)
    with pytest.raises(LLMError) as err:  # port 9 (discard) on loopback: refused at once
        backend._post("/chat/completions", {"model": "served"})
    assert "ConnectionError" in str(err.value) and "pa55word" not in str(err.value) and "s3cret" not in str(err.value)
    import time

    monkeypatch.setattr(time, "sleep", lambda s: None)  # the client's retry back-off
    client = EmbeddingClient(backend="openai", base_url=url, model="e", timeout_s=0.5)
    with pytest.raises(EmbeddingError) as err:
        client._encode_openai(["x"])
    assert "pa55word" not in str(err.value) and "s3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)
