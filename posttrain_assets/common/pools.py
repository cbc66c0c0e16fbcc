"""Dagster concurrency pools. Every step that loads a model on the accelerator (LLM sessions,
embeddings) runs in the `gpu` pool; the instance gives the pool one slot per GPU (deploy/dagster.yaml:
`concurrency.pools.default_limit: 1`, or `dagster instance concurrency set gpu N`), so a backfill
of many sources queues those steps instead of starting one engine per partition at once."""

import os

#: the pool name (POSTTRAIN_GPU_POOL overrides it, e.g. one pool per GPU type)
GPU_POOL = os.environ.get("POSTTRAIN_GPU_POOL", "gpu")
