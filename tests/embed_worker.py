"""Run by test_embeddings_resume in a subprocess that kills itself (SIGKILL) mid-way: its
embeddings resource's checkpoint hook (`resources.faults`, injected here) kills it right after
writing its KILL_AFTER-th chunk.

    python -m tests.embed_worker STORAGE_ROOT REGISTRY SOURCE CHUNK_ROWS KILL_AFTER
"""

import sys

import dagster as dg

from posttrain_assets.dedup.assets import prompt_embeddings
from posttrain_assets.ingest.assets import merged_prompts
from resources.embeddings import EmbeddingClient
from resources.faults import EMBEDDING_CHUNK

from .helpers import killed_after, resources_for


def main(root: str, registry: str, source: str, chunk_rows: int, kill_after: int) -> None:
    embeddings = killed_after(EmbeddingClient, kill_after, EMBEDDING_CHUNK, batch_size=8)
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions("source", [source])
        dg.materialize([merged_prompts.to_source_asset(), prompt_embeddings], selection=[prompt_embeddings],
                       partition_key=source, instance=inst,
                       resources={**resources_for(root, registry), "embeddings": embeddings},
                       run_config={"ops": {"prompt_embeddings": {"config": {"chunk_rows": chunk_rows}}}})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
