"""Dagster concurrency pools. Every step that loads a model on the accelerator (LLM sessions,
embeddings) runs in the `gpu` pool; the instance gives the pool one slot per GPU (deploy/dagster.yaml:
`concurrency.pools.default_limit: 1`, or `dagster instance concurrency set gpu N`), so a backfill
of many sources queues those steps instead of starting one engine per partition at once."""

import os

#: the pool name (POSTTRAIN_GPU_POOL overrides it, e.g. one pool per GPU type)
GPU_POOL = os.environ.get("POSTTRAIN_GPU_POOL", "gpu")

#: the op tags of a step that loads a model: on Kubernetes (dagster-k8s) its pod requests one GPU
GPU_STEP_TAGS = {"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}
