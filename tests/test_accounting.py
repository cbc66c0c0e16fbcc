"""Row accounting that can fail: every stage counts its input from what it loaded, its output from
what it writes, and its removed / rejected rows from the pure function's own issues. A pure function
that loses one row on purpose (monkeypatched) makes the blocking `row_accounting` check fail."""

import dagster as dg
import pyarrow as pa
import pytest

from posttrain_assets.common.sizing import full_sizes
from posttrain_assets.ingest import assets as ingest_assets
from posttrain_assets.ingest.loaders import RawBatches, load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.records import assets as records_assets
from posttrain_assets.records.unify import cot_from, sft_from
from posttrain_assets.scoring import assets as scoring_assets
from posttrain_assets.selection import assets as selection_assets
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import materialize_source, resources_for, upstream_specs


def _accounting(result, asset: str = "") -> tuple[bool, dict]:
    (ev,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "row_accounting"
             and (not asset or e.asset_key.to_user_string() == asset)]
    return ev.passed, {k: v.value for k, v in ev.metadata.items()}


def _skip_first_row(batches):
    first = True
    for b in batches:
        if first and b.num_rows:
            b, first = b.slice(1), False
        yield b


def _lose_one(fn):
    """Wrap a pure function so its output table (or stream of batches) misses its first row (and
    nothing says so)."""
    def lossy(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, RawBatches):  # stream_raw_table
            batches = out.batches
            out.batches = lambda: _skip_first_row(batches())
            return out
        if isinstance(out, tuple) and not isinstance(out[1], list):  # merge_prompt_batches: (merger, batches)
            return out[0], _skip_first_row(out[1])
        if isinstance(out, tuple):
            return (out[0].slice(1),) + tuple(out[1:])
        if isinstance(out, pa.Table):
            return out.slice(1)
        out.table = out.table.slice(1)  # MergeResult
        return out
    return lossy


def _run(instance, root, assets_, key, run_config=None):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    return dg.materialize(assets_, selection=[a for a in assets_ if isinstance(a, dg.AssetsDefinition)],
                          partition_key=key, instance=instance, resources=resources_for(root, BUNDLED_REGISTRY),
                          run_config=run_config, raise_on_error=False)


@pytest.fixture
def tables(bundled, tmp_path):
    """merged / deduplicated prompts and records of gsm8k (cot) and oasst_en (sft) on disk."""
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    for key in ("gsm8k", "oasst_en"):
        spec = bundled.get(key)
        merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
        store.write(merged, store.path("deduplicated_prompts", key))
        store.write(cot_from(merged)[0] if key == "gsm8k" else cot_from(merged.slice(0, 0))[0],
                    store.path("cot_records", key))
        store.write(sft_from(merged)[0] if key == "oasst_en" else sft_from(merged.slice(0, 0))[0],
                    store.path("sft_records", key))
    return root


@pytest.mark.parametrize("target,asset", [("stream_raw_table", "raw_records"),
                                          ("merge_prompt_batches", "merged_prompts")])
def test_ingest_loses_a_row(monkeypatch, instance, storage_root, target, asset):
    monkeypatch.setattr(ingest_assets, target, _lose_one(getattr(ingest_assets, target)))
    res = materialize_source("gsm8k", instance, storage_root, BUNDLED_REGISTRY, raise_on_error=False)
    passed, md = _accounting(res, asset)
    assert not passed and md["unaccounted"] == 1 and not res.success


def test_ingest_balanced_without_loss(instance, storage_root):
    res = materialize_source("gsm8k", instance, storage_root, BUNDLED_REGISTRY)
    assert all(e.passed for e in res.get_asset_check_evaluations())


@pytest.mark.parametrize("asset,target,key", [("sft_records", "sft_from", "oasst_en"),
                                               ("cot_records", "cot_from", "gsm8k"),
                                               ("preference_records", "preference_from", "oasst_en")])
def test_records_lose_a_row(monkeypatch, instance, tables, asset, target, key):
    a = getattr(records_assets, asset)
    ok = _run(instance, tables, upstream_specs("deduplicated_prompts") + [a], key)
    assert _accounting(ok)[0] and ok.success
    monkeypatch.setattr(records_assets, target, _lose_one(getattr(records_assets, target)))
    res = _run(instance, tables, upstream_specs("deduplicated_prompts") + [a], key)
    passed, md = _accounting(res)
    assert not passed and md["unaccounted"] == 1 and not res.success


def test_scoring_loses_a_row(monkeypatch, instance, tables):
    run = {"ops": {"difficulty_scores": {"config": {**full_sizes(scoring_assets.DifficultyConfig), "max_items": 2,
                                                    "samples": 1, "max_new_tokens": 8}}}}
    ok = _run(instance, tables, upstream_specs("cot_records", "sft_records") + [scoring_assets.difficulty_scores],
              "gsm8k", run)
    passed, md = _accounting(ok)
    assert passed and (md["rows_in"], md["rows_out"], md["removed"]) == (300, 2, 298)
    monkeypatch.setattr(scoring_assets, "score_items", _lose_one(scoring_assets.score_items))
    res = _run(instance, tables, upstream_specs("cot_records", "sft_records") + [scoring_assets.difficulty_scores],
               "gsm8k", run)
    passed, md = _accounting(res)
    assert not passed and md["unaccounted"] == 1 and not res.success


def test_selection_loses_a_row(monkeypatch, instance, tables):
    store = ParquetStore(tables)
    store.write(scoring_assets.SCORES_SCHEMA.empty_table(), store.path("difficulty_scores", "gsm8k"))
    specs = upstream_specs("cot_records", "sft_records", "difficulty_scores")
    run = {"ops": {"selected_seeds": {"config": {"method": {"length": {"total_samples": 30}}}}}}
    ok = _run(instance, tables, specs + [selection_assets.selected_seeds], "gsm8k", run)
    passed, md = _accounting(ok)
    assert passed and (md["rows_in"], md["rows_out"], md["removed"]) == (300, 30, 270)
    real = selection_assets.length_select

    def lossy(*a, **kw):
        idx, report = real(*a, **kw)
        return idx[1:], report
    monkeypatch.setattr(selection_assets, "length_select", lossy)
    res = _run(instance, tables, specs + [selection_assets.selected_seeds], "gsm8k", run)
    passed, md = _accounting(res)
    assert not passed and md["unaccounted"] == 1 and not res.success


def test_dedup_clusters_loses_a_row(monkeypatch, instance, tmp_path, bundled):
    from posttrain_assets.dedup import assets as dedup_assets
    from posttrain_assets.dedup.embedding import embeddings_table

    import numpy as np

    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    spec = bundled.get("gsm8k")
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table.slice(0, 20)
    store.write(merged, store.path("merged_prompts", "gsm8k"))
    vecs = np.eye(20, 8, dtype=np.float32) + np.arange(20, dtype=np.float32)[:, None] / 100  # 20 distinct
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.write(embeddings_table(merged["all_prompt_id"].to_pylist(), vecs), store.path("prompt_embeddings", "gsm8k"))
    instance.add_dynamic_partitions("source", ["gsm8k"])
    specs = upstream_specs("merged_prompts", "prompt_embeddings")
    run = {"ops": {"dedup_clusters": {"config": {"method": {"faiss_graph": {"threshold": 0.999}}}}}}

    def go():
        return dg.materialize(specs + [dedup_assets.dedup_clusters], selection=[dedup_assets.dedup_clusters],
                              instance=instance, resources=resources_for(root, BUNDLED_REGISTRY), run_config=run,
                              raise_on_error=False)
    ok = go()
    assert _accounting(ok)[0] and ok.success
    real = dedup_assets.cluster_prompts

    def lossy(*a, **kw):
        res = real(*a, **kw)
        res.clusters = res.clusters.slice(1)
        return res
    monkeypatch.setattr(dedup_assets, "cluster_prompts", lossy)
    res = go()
    passed, md = _accounting(res)
    assert not passed and md["unaccounted"] == 1 and not res.success


def test_prompt_embeddings_loses_a_row(monkeypatch, instance, tmp_path, bundled):
    from posttrain_assets.dedup import assets as dedup_assets

    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    spec = bundled.get("gsm8k")
    store.write(merge_prompts(rows_to_table(load_rows(spec)), spec).table.slice(0, 12),
                store.path("merged_prompts", "gsm8k"))
    real = dedup_assets.embed_in_chunks

    def lossy(*a, **kw):
        run = real(*a, **kw)
        run.table = run.table.slice(1)
        return run
    monkeypatch.setattr(dedup_assets, "embed_in_chunks", lossy)
    res = _run(instance, root, upstream_specs("merged_prompts") + [dedup_assets.prompt_embeddings], "gsm8k")
    passed, md = _accounting(res)
    assert not passed and md["unaccounted"] == 1 and not res.success
