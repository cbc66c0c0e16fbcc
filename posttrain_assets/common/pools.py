"""Dagster concurrency pools. Every step that loads a model on the accelerator (LLM sessions,
embeddings) runs in the `gpu` pool; the instance gives the pool one slot per GPU (deploy/dagster.yaml:
`concurrency.pools.default_limit: 1`, or `dagster instance concurrency set gpu N`), so a backfill
of many sources queues those steps instead of starting one engine per partition at once. The pool is
also the one marker of a GPU step on Kubernetes: posttrain_assets/deployment.py gives every step in it
the `nvidia.com/gpu` request, node selector and tolerations of deploy/k8s/steps.yaml, and the Helm
values set the pool's limit to the cluster's GPU count."""

import os

#: the pool name (POSTTRAIN_GPU_POOL overrides it, e.g. one pool per GPU type)
GPU_POOL = os.environ.get("POSTTRAIN_GPU_POOL", "gpu")
