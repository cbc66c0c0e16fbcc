"""Run by test_pool in a subprocess: materialise `prompt_embeddings` for one source in the
instance at $DAGSTER_HOME (whose `gpu` pool the test holds), tagged so the test finds the run.

    python -m tests.pool_worker STORAGE_ROOT REGISTRY SOURCE
"""

import sys

import dagster as dg

from posttrain_assets.dedup.assets import prompt_embeddings

from .helpers import resources_for, upstream_specs


def main(root: str, registry: str, source: str) -> None:
    instance = dg.DagsterInstance.get()
    res = dg.materialize(upstream_specs("merged_prompts") + [prompt_embeddings], selection=[prompt_embeddings],
                         partition_key=source, instance=instance, resources=resources_for(root, registry),
                         tags={"posttrain/test": "pool"})
    sys.exit(0 if res.success else 1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
