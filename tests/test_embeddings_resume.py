"""prompt_embeddings killed half-way (SIGKILL) resumes from its finished chunks: nothing lost,
nothing duplicated, the same vectors as an uninterrupted run. The worker kills itself right after
its 3rd chunk (the checkpoint hook `tests/embed_worker.py` injects), so the counts are exact."""

import signal
import subprocess
import sys

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from posttrain_assets.dedup.assets import prompt_embeddings
from posttrain_assets.common.vectors import vectors_of
from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.embeddings import USE_NAME, EmbeddingClient

from .conftest import BUNDLED_REGISTRY, REPO
from .helpers import mat_metadata, materialize_source, resources_for


def test_sigkill_then_resume(tmp_path, instance):
    root = str(tmp_path / "storage")
    materialize_source("self_instruct", instance, root, BUNDLED_REGISTRY, assets=[raw_records, merged_prompts])
    chunk_dir = tmp_path / "storage" / "_chunks" / "prompt_embeddings" / "source=self_instruct"
    killed_after = 3
    proc = subprocess.run([sys.executable, "-m", "tests.embed_worker", root, str(BUNDLED_REGISTRY),
                           "self_instruct", "16", str(killed_after)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    done = sorted(p.name for p in chunk_dir.glob("*/chunk-*.parquet"))
    # 175 rows / 16 = 11 chunks: exactly the first 3 (the shortest prompts) were written
    assert done == [f"chunk-{c:05d}.parquet" for c in range(killed_after)], done
    assert not list(chunk_dir.glob("*/*.tmp-*"))  # no half-written chunk left behind
    assert not (tmp_path / "storage" / "prompt_embeddings").exists()  # no output written yet

    res = dg.materialize([merged_prompts.to_source_asset(), prompt_embeddings], selection=[prompt_embeddings],
                         partition_key="self_instruct", instance=instance,
                         resources={**resources_for(root, BUNDLED_REGISTRY), "embeddings": EmbeddingClient(batch_size=8)},
                         run_config={"ops": {"prompt_embeddings": {"config": {"chunk_rows": 16}}}})
    md = mat_metadata(res, "prompt_embeddings")
    # the finished chunks (the shortest prompts first) are reused, only the rest is encoded
    assert (md["chunks_total"], md["chunks_resumed"]) == (11, killed_after)
    assert md["rows_encoded_now"] == 175 - 16 * killed_after
    assert md["dim"] == 1024 and md["model"] == USE_NAME and md["backend"] == "use_multilingual"
    assert not chunk_dir.exists()  # chunks cleaned up after success
    resumed = pq.read_table(f"{root}/prompt_embeddings/source=self_instruct/data.parquet")
    merged_ids = pq.read_table(f"{root}/merged_prompts/source=self_instruct/data.parquet")["all_prompt_id"].to_pylist()
    assert resumed["all_prompt_id"].to_pylist() == merged_ids  # every row once, in input order

    # an uninterrupted run gives the same vectors
    fresh_root = str(tmp_path / "fresh")
    with dg.DagsterInstance.ephemeral() as other:
        materialize_source("self_instruct", other, fresh_root, BUNDLED_REGISTRY,
                           assets=[raw_records, merged_prompts, prompt_embeddings])
    fresh = pq.read_table(f"{fresh_root}/prompt_embeddings/source=self_instruct/data.parquet")
    assert np.allclose(vectors_of(resumed), vectors_of(fresh), atol=1e-5)
