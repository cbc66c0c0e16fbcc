"""The Kubernetes deployment without a cluster (none runs here): the deployment switch, the Job specs
the k8s_job_executor builds for each kind of step (dagster-k8s's own K8sStepHandler.launch_step; only
the Kubernetes API call that would submit the Job is replaced by a recorder), the vLLM manifests and
the built Jobs validated against Kubernetes' schemas (kubernetes-validate), and the Helm values
parsed and checked field by field (the chart's values schema is not installable here)."""

import importlib
import os
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pyarrow.fs as pafs
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._grpc.types import ExecuteStepArgs
from kubernetes.client import ApiClient

import posttrain_assets.definitions as definitions
from posttrain_assets.deployment import DeploymentError, gpu_ops, object_store_root, select_deployment

REPO = Path(__file__).resolve().parents[1]
VALUES = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
STEPS = yaml.safe_load((REPO / "deploy/k8s/steps.yaml").read_text())
USER_DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]
CODE_IMAGE = f"{USER_DEPLOYMENT['image']['repository']}:{USER_DEPLOYMENT['image']['tag']}"
DEPLOYMENT_ENV = {e["name"]: e["value"] for e in USER_DEPLOYMENT["env"]}
GPU_IMAGE = DEPLOYMENT_ENV["POSTTRAIN_GPU_IMAGE"]
K8S_VERSION = "1.30.0"
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
LLM_CACHE_DIR = DEPLOYMENT_ENV["POSTTRAIN_LLM_CACHE_DIR"]
LLM_CACHE_CLAIM = DEPLOYMENT_ENV["POSTTRAIN_LLM_CACHE_CLAIM"]
SECRET_VALUE = "not-for-any-manifest"  # a credential in the environment must never reach a spec


# ------------------------------------------------------------------ the switch
def test_unknown_deployment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_DEPLOYMENT", "kubernetes")
    with pytest.raises(DeploymentError, match=r"POSTTRAIN_DEPLOYMENT must be one of local, k8s, got 'kubernetes'"):
        select_deployment(definitions.all_assets)


def test_local_is_today(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_DEPLOYMENT", raising=False)
    dep = select_deployment(definitions.all_assets)
    assert (dep.name, dep.executor.name, dep.resources) == ("local", "local_in_process", {})
    assert definitions.defs.executor.name == "local_in_process"  # a run's steps in its process


@pytest.mark.parametrize("root", ["", "./storage", "/data/posttrain", "memory://x", "file:///data"])
def test_k8s_refuses_a_storage_root_the_step_pods_do_not_share(monkeypatch, root):
    monkeypatch.setenv("POSTTRAIN_DEPLOYMENT", "k8s")
    monkeypatch.setenv("POSTTRAIN_STORAGE", root)
    with pytest.raises(DeploymentError, match=r"POSTTRAIN_STORAGE to be an object-store URI .*s3://bucket/prefix"):
        select_deployment(definitions.all_assets)


@pytest.mark.parametrize("cache_dir,claim", [(None, None), ("", "posttrain-llm-cache"), ("~/.cache/llm", "c"),
                                             ("/var/cache/posttrain/llm", None)])
def test_k8s_refuses_an_llm_cache_without_a_persistent_volume(monkeypatch, cache_dir, claim):
    """The cache fell back to the pod's home directory on k8s, lost with each step pod (issue 21)."""
    monkeypatch.setenv("POSTTRAIN_DEPLOYMENT", "k8s")
    monkeypatch.setenv("POSTTRAIN_STORAGE", "s3://b/p?region=eu-west-1")
    for name, value in (("POSTTRAIN_LLM_CACHE_DIR", cache_dir), ("POSTTRAIN_LLM_CACHE_CLAIM", claim)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(DeploymentError, match=r"k8s needs a persistent LLM cache: set POSTTRAIN_LLM_CACHE_DIR "
                                              r".* and POSTTRAIN_LLM_CACHE_CLAIM"):
        select_deployment(definitions.all_assets)


def test_object_store_root_gets_the_region(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert object_store_root("s3://b/p") == "s3://b/p?region=eu-west-1"
    assert object_store_root("s3://b/p?region=us-east-1") == "s3://b/p?region=us-east-1"
    assert object_store_root("s3://b/p?endpoint_override=minio:9000") == "s3://b/p?endpoint_override=minio:9000"
    assert object_store_root("gs://b/p") == "gs://b/p"


@pytest.fixture(scope="module")
def k8s_defs():
    """posttrain_assets.definitions loaded again with the code location's environment from the Helm
    values (POSTTRAIN_DEPLOYMENT=k8s, an s3:// root, ...) plus a credential; reloaded as local after."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DEPLOYMENT_ENV.items():
            mp.setenv(k, v)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
        yield importlib.reload(definitions)
    importlib.reload(definitions)


def test_k8s_definitions_load_with_the_k8s_executor_and_an_s3_root(k8s_defs):
    assert k8s_defs.DEPLOYMENT.name == "k8s"
    for job in k8s_defs.PIPELINE:
        assert k8s_defs.defs.resolve_job_def(job.name).executor_def.name == "k8s"
    storage = k8s_defs.defs.resources["storage"]
    assert storage.root == "s3://posttrain-data/posttrain?region=eu-west-1"
    assert k8s_defs.defs.resources["io_manager"].storage.root == storage.root
    # the region is in the URI, so opening the store asks nothing of the network (without it, pyarrow
    # sends a HeadBucket to find the region, which fails here: no network)
    store = storage.store()
    assert isinstance(store.fs, pafs.S3FileSystem) and store.fs.region == "eu-west-1"
    assert (store.base, store.path("merged_prompts", "gsm8k")) == \
        ("posttrain-data/posttrain", "posttrain-data/posttrain/merged_prompts/source=gsm8k/data.parquet")
    # the LLM cache on the mounted claim, not the pod's home
    assert k8s_defs.defs.resources["llm"].cache_path(storage) == "/var/cache/posttrain/llm/llm_cache.sqlite"


# ------------------------------------------------------------------ Job specs, built by dagster-k8s
class RecordingBatchApi:
    """Stands in for the cluster's batch/v1 API: keeps the Job the executor submits."""

    def __init__(self):
        self.jobs = []

    def create_namespaced_job(self, body, namespace, **_):
        self.jobs.append((namespace, body))


def _kubeconfig(path: Path) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


@pytest.fixture(scope="module")
def k8s_instance(tmp_path_factory):
    """An instance with the K8sRunLauncher as the Helm values configure it (namespace, secrets)."""
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    config = {"service_account_name": "dagster", "instance_config_map": "dagster-instance",
              "postgres_password_secret": VALUES["global"]["postgresqlSecretName"],
              "dagster_home": "/opt/dagster/dagster_home", "job_namespace": "dagster",
              "load_incluster_config": False, "kubeconfig_file": _kubeconfig(tmp_path_factory.mktemp("kube") / "config"),
              "env_secrets": [s["name"] for s in launcher["envSecrets"]]}
    with instance_for_test(overrides={"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher",
                                                       "config": config}}) as inst:
        yield inst


def step_job(k8s_defs, instance, job_name: str, step_key: str) -> dict:
    """The Job that the job's k8s executor (its config resolved as in a run) submits for one step."""
    repo = ReconstructableRepository.for_module("posttrain_assets.definitions", "defs", working_directory=str(REPO),
                                                container_image=CODE_IMAGE)  # the image the code server reports
    recon = repo.get_reconstructable_job(job_name)
    job_def = k8s_defs.defs.resolve_job_def(job_name)
    resolved = ResolvedRunConfig.build(job_def, {})
    executor = job_def.executor_def.executor_creation_fn(InitExecutorContext(
        job=recon, executor_def=job_def.executor_def, executor_config=resolved.execution.execution_engine_config,
        instance=instance))
    api = RecordingBatchApi()
    executor._step_handler._api_client.batch_api = api  # noqa: SLF001 (no cluster to submit to)
    run = create_run_for_test(instance, job_name=job_name, job_code_origin=recon.get_python_origin())
    plan = create_execution_plan(recon)
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=recon, dagster_run=run, instance=instance, execution_plan=plan, raise_on_error=True,
                           retry_mode=RetryMode.DISABLED),
        log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None)
    list(executor._step_handler.launch_step(StepHandlerContext(  # noqa: SLF001
        instance=instance, plan_context=plan_context, steps=plan.steps, dagster_run=run,
        execute_step_args=ExecuteStepArgs(recon.get_python_origin(), run.run_id, [step_key]))))
    [(namespace, body)] = api.jobs
    assert namespace == "dagster"
    return ApiClient().sanitize_for_serialization(body)


GPU_RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                 "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
CPU_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
STEP_KINDS = {  # step: (job, image, resources, GPU node)
    "difficulty_scores": ("scoring_job", GPU_IMAGE, GPU_RESOURCES, True),  # LLM
    "prompt_embeddings": ("ingest_job", GPU_IMAGE, GPU_RESOURCES, True),  # embeddings
    "attribute_model": ("attribute_model_job", GPU_IMAGE, GPU_RESOURCES, True),  # global training step
    "merged_prompts": ("ingest_job", CODE_IMAGE, CPU_RESOURCES, False),
    "dedup_clusters": ("dedup_job", CODE_IMAGE, {"requests": {"cpu": "2", "memory": "4Gi"},
                                                 "limits": {"memory": "16Gi"}}, False),  # steps.yaml override
}


@pytest.mark.parametrize("step", list(STEP_KINDS))
def test_step_job_spec(k8s_defs, k8s_instance, step):
    job_name, image, resources, gpu = STEP_KINDS[step]
    body = step_job(k8s_defs, k8s_instance, job_name, step)
    pod = body["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert (body["metadata"]["labels"]["dagster/op"], body["metadata"]["labels"]["dagster/job"]) == (step, job_name)
    assert container["image"] == image
    assert container["resources"] == resources
    assert pod.get("nodeSelector") == (GPU_SELECTOR if gpu else None)
    assert pod.get("tolerations") == ([GPU_TOLERATION] if gpu else None)
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTTRAIN_DEPLOYMENT"]["value"] == "k8s"
    assert env["POSTTRAIN_STORAGE"]["value"] == "s3://posttrain-data/posttrain?region=eu-west-1"
    assert env["POSTTRAIN_LLM_CONFIG"]["value"] == "/opt/posttrain/deploy/k8s/models-serve.yaml"
    assert env["DAGSTER_RUN_STEP_KEY"]["value"] == step
    # the LLM cache's claim mounted at the cache dir in every step pod
    assert env["POSTTRAIN_LLM_CACHE_DIR"]["value"] == LLM_CACHE_DIR
    assert [v for v in pod["volumes"] if v["name"] == "llm-cache"] == [
        {"name": "llm-cache", "persistentVolumeClaim": {"claimName": LLM_CACHE_CLAIM}}]
    assert [m for m in container["volumeMounts"] if m["name"] == "llm-cache"] == [
        {"name": "llm-cache", "mountPath": LLM_CACHE_DIR}]
    # secrets by reference only: envFrom the Secret, the instance's password by secretKeyRef
    assert container["envFrom"] == [{"secretRef": {"name": "posttrain-secrets"}}]
    assert env["DAGSTER_PG_PASSWORD"] == {"name": "DAGSTER_PG_PASSWORD", "valueFrom": {
        "secretKeyRef": {"key": "postgresql-password", "name": "dagster-postgresql-secret"}}}
    assert "AWS_SECRET_ACCESS_KEY" not in env and SECRET_VALUE not in yaml.safe_dump(body)
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)


def test_gpu_steps_are_the_gpu_pool(k8s_defs):
    """Every model step (test_layout's list) and nothing else gets the GPU pod config."""
    cfg = ResolvedRunConfig.build(k8s_defs.defs.resolve_job_def("scoring_job"), {}).execution.execution_engine_config
    gpu = {op for op, c in cfg["per_step_k8s_config"].items() if "nvidia.com/gpu" in c["container_config"]["resources"]["limits"]}
    assert gpu == set(gpu_ops(definitions.all_assets)) == {
        "attribute_labelled_sft", "attribute_model", "benchmark_index", "difficulty_scores", "evolved_instructions",
        "generated_solutions", "magpie_instructions", "preference_pairs", "prompt_embeddings", "quality_tags"}
    assert set(cfg["per_step_k8s_config"]) - gpu == {"dedup_clusters"}


# ------------------------------------------------------------------ manifests and Helm values
def _docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def test_vllm_manifests_validate_and_keep_secrets_in_secrets():
    docs = _docs("deploy/k8s/vllm.yaml")
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Deployment", "Service"]
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    pvc, deployment, service = docs
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (pod["nodeSelector"], pod["tolerations"]) == (GPU_SELECTOR, [GPU_TOLERATION])
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "posttrain-secrets", "key": "HF_TOKEN", "optional": True}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "posttrain-secrets", "key": "LLM_API_KEY"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == \
        {pvc["metadata"]["name"]}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # the LLM config the code location uses points at this Service and the model it serves
    models = yaml.safe_load((REPO / "deploy/k8s/models-serve.yaml").read_text())["models"]
    served = container["args"][container["args"].index("--model") + 1]
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"
    assert {(m["backend"], m["model"], m["base_url"]) for m in models.values()} == {("openai", served, url)}


def test_llm_cache_claim_and_the_values_mount_it():
    [pvc] = _docs("deploy/k8s/llm-cache.yaml")
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    assert (pvc["kind"], pvc["metadata"]["name"], pvc["spec"]["accessModes"]) == \
        ("PersistentVolumeClaim", LLM_CACHE_CLAIM, ["ReadWriteMany"])  # step pods on several nodes
    assert LLM_CACHE_DIR.startswith("/") and not LLM_CACHE_DIR.startswith(("/tmp", "/root", "/home"))
    assert USER_DEPLOYMENT["volumes"] == [{"name": "llm-cache", "persistentVolumeClaim": {"claimName": LLM_CACHE_CLAIM}}]
    assert USER_DEPLOYMENT["volumeMounts"] == [{"name": "llm-cache", "mountPath": LLM_CACHE_DIR}]


def test_helm_values():
    launcher = VALUES["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert launcher["config"]["k8sRunLauncher"]["envSecrets"] == [{"name": "posttrain-secrets"}]
    # keys the chart's K8sRunLauncherConfig (1.13) accepts; it forbids others
    assert set(launcher["config"]["k8sRunLauncher"]) <= {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"}
    pg = VALUES["postgresql"]
    assert (pg["enabled"], pg["postgresqlPassword"], VALUES["generatePostgresqlPasswordSecret"]) == (False, "", False)
    assert pg["postgresqlScheme"] == "postgresql+psycopg2"  # as deploy/dagster-postgres.yaml: psycopg 3 is not installed
    assert VALUES["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    coordinator = VALUES["dagsterDaemon"]["runCoordinator"]
    assert (coordinator["enabled"], coordinator["type"]) == (True, "QueuedRunCoordinator")
    assert coordinator["config"]["queuedRunCoordinator"] == {
        "maxConcurrentRuns": 16, "tagConcurrencyLimits": [
            {"key": "dagster/backfill", "limit": 8},
            # one run per partition (resources/run_guard.py), as in deploy/dagster.yaml
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]}
    local = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["concurrency"]["runs"]
    assert local["tag_concurrency_limits"] == [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True},
                                                "limit": 1}]
    # never root: the code location's pods and the run workers as the images' user
    assert USER_DEPLOYMENT["podSecurityContext"]["runAsNonRoot"] is True
    assert USER_DEPLOYMENT["podSecurityContext"]["runAsUser"] == 10001
    assert USER_DEPLOYMENT["securityContext"]["allowPrivilegeEscalation"] is False
    assert launcher["config"]["k8sRunLauncher"]["securityContext"]["runAsNonRoot"] is True
    # the gpu pool's limit: slots = GPUs / GPUs per step
    assert VALUES["concurrency"] == {"enabled": True, "pools": {"defaultLimit": 8, "granularity": "op"}}
    assert STEPS["gpu_step"]["gpus"] == 1
    # the code location: this repo's image, the k8s switch, secrets by name, config reaching run pods
    assert VALUES["dagster-user-deployments"]["enabled"] is True
    assert USER_DEPLOYMENT["dagsterApiGrpcArgs"] == ["-m", "posttrain_assets.definitions"]
    assert USER_DEPLOYMENT["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert USER_DEPLOYMENT["envSecrets"] == [{"name": "posttrain-secrets"}]
    assert DEPLOYMENT_ENV["POSTTRAIN_DEPLOYMENT"] == "k8s" and DEPLOYMENT_ENV["POSTTRAIN_STORAGE"].startswith("s3://")
    assert not {k for k in DEPLOYMENT_ENV if any(w in k for w in ("SECRET", "TOKEN", "PASSWORD", "API_KEY"))}
    # both images from one release (same tag), the GPU one as steps.yaml has it
    assert GPU_IMAGE == STEPS["gpu_step"]["image"] and GPU_IMAGE.endswith(":" + USER_DEPLOYMENT["image"]["tag"])


def test_image_paths_exist():
    """The paths the values name inside the image are this repo's files (the Dockerfiles' WORKDIR)."""
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "deploy/docker" / dockerfile).read_text()
        assert "WORKDIR /opt/posttrain\n" in text and "COPY . .\n" in text
    prefix = "/opt/posttrain/"
    assert os.path.isfile(REPO / DEPLOYMENT_ENV["POSTTRAIN_LLM_CONFIG"].removeprefix(prefix))
    gpu = (REPO / "deploy/docker/Dockerfile.gpu").read_text()
    assert "FROM nvidia/cuda:" in gpu and '".[k8s,gpu]"' in gpu


def test_images_run_as_a_user_and_listen_on_loopback_by_default():
    """Both images ran as root and bound the code server to 0.0.0.0 (issue 21)."""
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        lines = (REPO / "deploy/docker" / dockerfile).read_text().splitlines()
        users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
        assert users == ["10001"], dockerfile  # the Helm values' runAsUser
        last_user = max(i for i, ln in enumerate(lines) if ln.startswith("USER "))
        assert last_user < max(i for i, ln in enumerate(lines) if ln.startswith("CMD ")), dockerfile
        assert "ENV POSTTRAIN_GRPC_HOST=127.0.0.1" in lines and not any("0.0.0.0" in ln for ln in lines
                                                                         if not ln.startswith("#")), dockerfile
