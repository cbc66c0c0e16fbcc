"""Run by test_embeddings_resume in a subprocess that kills itself (SIGKILL) mid-way: with
POSTTRAIN_TEST_SIGKILL_AFTER_EMBED_CHUNKS=k in its environment it dies right after writing its
k-th chunk (posttrain_assets/dedup/embedding.py).

    python -m tests.embed_worker STORAGE_ROOT REGISTRY SOURCE CHUNK_ROWS
"""

import sys

import dagster as dg

from posttrain_assets.dedup.assets import prompt_embeddings
from posttrain_assets.ingest.assets import merged_prompts
from resources.embeddings import EmbeddingClient

from .helpers import resources_for


def main(root: str, registry: str, source: str, chunk_rows: int) -> None:
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions("source", [source])
        dg.materialize([merged_prompts.to_source_asset(), prompt_embeddings], selection=[prompt_embeddings],
                       partition_key=source, instance=inst,
                       resources={**resources_for(root, registry), "embeddings": EmbeddingClient(batch_size=8)},
                       run_config={"ops": {"prompt_embeddings": {"config": {"chunk_rows": chunk_rows}}}})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
