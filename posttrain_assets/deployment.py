"""The deployment switch, the one place that reads `POSTTRAIN_DEPLOYMENT`:

- `local` (default): `build_resources()` as is; a run's steps one after another in the run's own
  process (`in_process`), sharing its resources: the embedded engine and the embedder load once per
  run, not once per step, and no step process re-imports torch, transformers and the graph. Parallel
  work comes from the run queue (deploy/dagster.yaml); `execution: config: multiprocess: {}` in the
  launchpad gives a run Dagster's process per step instead.
- `k8s`: dagster-k8s's `k8s_job_executor` (one Kubernetes Job per step) and the Parquet root on object
  storage (`POSTTRAIN_STORAGE=s3://…` or `gs://…`; step pods share no disk). The LLM cache needs a
  persistent volume: `POSTTRAIN_LLM_CACHE_DIR` (an absolute path) and `POSTTRAIN_LLM_CACHE_CLAIM` (the
  PersistentVolumeClaim every step pod mounts there, deploy/k8s/llm-cache.yaml); without them the
  definitions do not load (the cache would fall back to the pod's home and die with the pod). The instance (Postgres,
  `K8sRunLauncher`, run queue, the `gpu` pool's limit) comes from the Helm values, deploy/helm/values.yaml.

Per-step pod resources come from deploy/k8s/steps.yaml (`POSTTRAIN_K8S_STEPS` names another file):
every step in the `gpu` concurrency pool (the steps that load a model) is a GPU step — `nvidia.com/gpu`
request and limit, node selector, tolerations, its image — the others get the small CPU-step requests.
They become the executor's `step_k8s_config` (every step) and `per_step_k8s_config` (GPU steps, by op
name): the pool is the one marker of a GPU step, the YAML file the one place for the numbers."""

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import parse_qsl, urlsplit

import dagster as dg
import yaml

from .common.pools import GPU_POOL

DEPLOYMENT_ENV = "POSTTRAIN_DEPLOYMENT"
STEPS_ENV = "POSTTRAIN_K8S_STEPS"
GPU_IMAGE_ENV = "POSTTRAIN_GPU_IMAGE"
STORAGE_ENV = "POSTTRAIN_STORAGE"
LLM_CACHE_DIR_ENV = "POSTTRAIN_LLM_CACHE_DIR"  # LLMResource.cache_dir (definitions.build_resources)
LLM_CACHE_CLAIM_ENV = "POSTTRAIN_LLM_CACHE_CLAIM"  # k8s: the PersistentVolumeClaim mounted at the cache dir
LLM_CACHE_VOLUME = "llm-cache"
DEPLOYMENTS = ("local", "k8s")
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")
DEFAULT_STEPS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "steps.yaml"
#: passed to every step pod by value (the rest of its environment: env_secrets / the code location)
FORWARDED_ENV = ("POSTTRAIN_LLM_CONFIG", "POSTTRAIN_GPU_POOL", "AWS_REGION", LLM_CACHE_DIR_ENV, LLM_CACHE_CLAIM_ENV)


@dg.executor(
    name="local_in_process",
    config_schema=dg.Field(
        dg.Selector({mode: f.config_type for mode, f in  # Dagster's default executor's own two modes
                     dg.multi_or_in_process_executor.config_schema.config_type.fields.items()}),
        default_value={"in_process": {}},
        description="in_process (default): a run's steps one after another in the run's process, sharing its "
                    "resources (one engine load per model per run); multiprocess: a process per step"),
    requirements=dg.multi_or_in_process_executor.get_requirements,  # multiprocess: a persistent instance
)
def LOCAL_EXECUTOR(init_context):
    """Local runs (`make ui`, backfills, schedules): Dagster's own in-process or multiprocess executor,
    in_process by default (the launchpad's `execution: config: multiprocess: {}` picks the other)."""
    return dg.multi_or_in_process_executor.executor_creation_fn(init_context)


class DeploymentError(ValueError):
    pass


@dataclass(frozen=True)
class Deployment:
    name: str
    executor: Optional[dg.ExecutorDefinition] = None
    resources: dict = field(default_factory=dict)  # overrides of build_resources()


def deployment_name() -> str:
    name = os.environ.get(DEPLOYMENT_ENV, "").strip() or "local"
    if name not in DEPLOYMENTS:
        raise DeploymentError(f"{DEPLOYMENT_ENV} must be one of {', '.join(DEPLOYMENTS)}, got {name!r}")
    return name


def gpu_ops(assets: Iterable) -> list[str]:
    """Op names of the executable steps in the `gpu` pool (the steps that load a model)."""
    return sorted({a.node_def.name for a in assets if isinstance(a, dg.AssetsDefinition) and a.is_executable
                   and GPU_POOL in (a.node_def.pools or set())})


def load_steps(path: Optional[str] = None) -> dict:
    path = Path(path or os.environ.get(STEPS_ENV) or DEFAULT_STEPS_FILE)
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("cpu_step", "gpu_step") if k not in data]
    if missing:
        raise DeploymentError(f"{path}: missing {', '.join(missing)}")
    return data


def _merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _container(step: dict) -> dict:
    """A steps.yaml entry -> dagster-k8s `container_config` / `pod_spec_config` (snake_case)."""
    resources = copy.deepcopy({k: step[k] for k in ("requests", "limits") if k in step})
    if step.get("gpus"):
        for part in ("requests", "limits"):
            resources.setdefault(part, {})["nvidia.com/gpu"] = str(step["gpus"])
    container = {"resources": resources}
    if step.get("image"):
        container["image"] = step["image"]
    pod = {k: step[k] for k in ("node_selector", "tolerations") if step.get(k)}
    return {"container_config": container, **({"pod_spec_config": pod} if pod else {})}


def llm_cache_volume() -> tuple[str, str]:
    """k8s: (the LLM cache directory, the PersistentVolumeClaim mounted there). Both are required: a
    step pod's home directory (the cache's fallback when the storage root is not local) is lost with
    the pod, so every run would ask the models again."""
    path = os.environ.get(LLM_CACHE_DIR_ENV, "").strip()
    claim = os.environ.get(LLM_CACHE_CLAIM_ENV, "").strip()
    if not path or not path.startswith("/") or not claim:
        raise DeploymentError(
            f"{DEPLOYMENT_ENV}=k8s needs a persistent LLM cache: set {LLM_CACHE_DIR_ENV} to an absolute path "
            f"(got {path!r}) and {LLM_CACHE_CLAIM_ENV} to the PersistentVolumeClaim mounted there in every step "
            f"pod (got {claim!r}; deploy/k8s/llm-cache.yaml, deploy/helm/values.yaml); without them the cache "
            f"falls back to the pod's home directory and is lost when the pod ends")
    return path, claim


def _with_volume(container: dict, path: str, claim: str) -> dict:
    """A _container() config with the LLM cache claim mounted at `path`."""
    out = copy.deepcopy(container)
    out["container_config"]["volume_mounts"] = [{"name": LLM_CACHE_VOLUME, "mount_path": path}]
    out.setdefault("pod_spec_config", {})["volumes"] = [
        {"name": LLM_CACHE_VOLUME, "persistent_volume_claim": {"claim_name": claim}}]
    return out


def k8s_executor_config(assets: Iterable, steps: dict, storage_root: str,
                        llm_cache: Optional[tuple[str, str]] = None) -> dict:
    """The k8s_job_executor's config: env for every step pod, CPU-step defaults, GPU steps by op;
    `llm_cache` (path, claim): the claim mounted at the path in every step pod."""
    gpu_step = dict(steps["gpu_step"])
    gpu_step["image"] = os.environ.get(GPU_IMAGE_ENV) or gpu_step.get("image", "")
    cpu_step = {k: v for k, v in steps["cpu_step"].items() if k != "image"}
    overrides = steps.get("steps") or {}
    gpu = gpu_ops(assets)
    env = [f"{DEPLOYMENT_ENV}=k8s", f"{STORAGE_ENV}={storage_root}"]
    env += [f"{k}={os.environ[k]}" for k in FORWARDED_ENV if os.environ.get(k)]
    per_step = {op: _container(_merged(gpu_step, overrides.get(op, {}))) for op in gpu}
    per_step.update({op: _container(_merged(cpu_step, o)) for op, o in overrides.items() if op not in gpu})
    step_config = _container(cpu_step)
    if llm_cache:
        step_config = _with_volume(step_config, *llm_cache)
    return {
        "env_vars": env,
        "env_secrets": list(steps.get("env_secrets") or []),
        "step_k8s_config": step_config,
        "per_step_k8s_config": per_step,
    }


def object_store_root(root: str) -> str:
    """The k8s storage root: an s3:// or gs:// URI. An s3 root without `region=` (or an
    `endpoint_override=`) gets $AWS_REGION, so opening the store makes no HeadBucket call."""
    scheme = root.split("://", 1)[0] if "://" in root else ""
    if scheme not in OBJECT_STORE_SCHEMES:
        raise DeploymentError(f"{DEPLOYMENT_ENV}=k8s needs {STORAGE_ENV} to be an object-store URI every step pod "
                              f"reads and writes (s3://bucket/prefix or gs://bucket/prefix), got {root!r}")
    query = dict(parse_qsl(urlsplit(root).query))
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if scheme == "s3" and region and not ({"region", "endpoint_override"} & set(query)):
        root += ("&" if query else "?") + f"region={region}"
    return root


def select_deployment(assets: Iterable) -> Deployment:
    """The executor and resource overrides for $POSTTRAIN_DEPLOYMENT (a clear error for anything else)."""
    name = deployment_name()
    if name == "local":
        return Deployment("local", LOCAL_EXECUTOR)
    from dagster_k8s import k8s_job_executor

    from resources.storage import ParquetIOManager, StorageResource

    root = object_store_root(os.environ.get(STORAGE_ENV, ""))
    cache = llm_cache_volume()
    storage = StorageResource(root=root)
    executor = k8s_job_executor.configured(k8s_executor_config(assets, load_steps(), root, cache), name="k8s")
    return Deployment("k8s", executor, {"storage": storage, "io_manager": ParquetIOManager(storage=storage)})
