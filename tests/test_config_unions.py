"""The configs whose fields depend on a chosen method / backend are discriminated unions: the launchpad
and YAML show only the chosen variant's fields (`method: {minhash: {...}}`). Per union: the default
works with no config, the other variant validates and reaches the code, a field of another variant is
refused, a bad choice is refused by Dagster's config validation naming the field. The reward resource's
backend is a union too, in a ConfigurableResource: checked through resource config and built in Python.
Cheap: no model runs."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from posttrain_assets.dedup.assets import DbscanDedup, DedupConfig, FaissGraphDedup, MinhashDedup
from posttrain_assets.dedup.duplicates import cluster_prompts
from posttrain_assets.selection.assets import (DifficultySelection, LengthSelection, PassRateSelection,
                                               SelectionConfig)
from posttrain_assets.steerlm.assets import AttributeModelConfig, HeadBackend, LoraBackend
from posttrain_assets.steerlm.lora import LoraSettings
from resources.reward import AttributesReward, ClassifierReward, JudgeReward, RewardResource


def _job(config_cls):
    """A one-op job whose op takes `config_cls`: Dagster's own config validation of the run config."""
    seen = {}

    @dg.op(name="stage")
    def stage(config: config_cls):  # type: ignore[valid-type]
        seen["config"] = config

    @dg.job
    def job():
        stage()

    return job, seen


def _validate(config_cls, config: dict):
    job, _ = _job(config_cls)
    return dg.validate_run_config(job, {"ops": {"stage": {"config": config}}})["ops"]["stage"]["config"]


def _run(config_cls, config: dict):
    job, seen = _job(config_cls)
    assert job.execute_in_process(run_config={"ops": {"stage": {"config": config}}} if config else None).success
    return seen["config"]


def _refused(config_cls, config: dict, *words: str):
    job, _ = _job(config_cls)
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"ops": {"stage": {"config": config}}})
    for w in words:
        assert w in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------ dedup
def _dedup_data():
    """Two sources: a pair of identical-looking prompts (near vectors, same words) and a distinct one."""
    prompts = ["How many apples are in the red basket today?", "How many apples are in the red basket now?",
               "Translate this sentence into French please."]
    merged = pa.table({"all_prompt_id": ["a:0", "b:0", "b:1"], "source": ["a", "b", "b"], "prompt": prompts,
                       "prompt_norm_hash": ["h0", "h1", "h2"]})
    X = np.array([[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.0, 0.0, 1.0]], np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    emb = pa.table({"all_prompt_id": merged["all_prompt_id"],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3)})
    return merged, emb


def test_dedup_default_is_faiss_graph_with_no_config():
    cfg = _run(DedupConfig, {})
    assert isinstance(cfg.method, FaissGraphDedup) and cfg.method.search == "" and cfg.scope == "global"
    assert DedupConfig().method == FaissGraphDedup()
    merged, emb = _dedup_data()
    res = cluster_prompts(merged, emb, {}, {}, cfg, model_threshold=lambda m: 0.95)
    assert res.stats["method"] == "faiss_graph" and res.stats["threshold"] == 0.95
    assert res.clusters.filter(pa.compute.field("keep")).num_rows == 2  # the near pair merged


@pytest.mark.parametrize("choice, expected", [
    ({"minhash": {"jaccard_threshold": 0.5, "ngram": 2}}, MinhashDedup(jaccard_threshold=0.5, ngram=2)),
    ({"dbscan": {"threshold": 0.999}}, DbscanDedup(threshold=0.999)),
    ({"faiss_graph": {"search": "exact", "threshold": 0.5}}, FaissGraphDedup(search="exact", threshold=0.5)),
])
def test_dedup_other_methods_validate_and_reach_the_clustering(choice, expected):
    assert _validate(DedupConfig, {"method": choice, "scope": "kind"})["method"].keys() == choice.keys()
    cfg = _run(DedupConfig, {"method": choice, "scope": "kind"})
    assert cfg.method == expected and cfg.scope == "kind"
    merged, emb = _dedup_data()
    res = cluster_prompts(merged, emb, {}, {}, cfg, model_threshold=lambda m: 0.95)
    assert res.stats["method"] == expected.name
    kept = res.clusters.filter(pa.compute.field("keep")).num_rows
    # minhash on 2-grams at 0.5 joins the apple pair; dbscan at 0.999 joins nothing; faiss at 0.5 the pair
    assert kept == {"minhash": 2, "dbscan": 3, "faiss_graph": 2}[expected.name]


def test_dedup_refuses_another_methods_field_and_bad_choices():
    _refused(DedupConfig, {"method": {"minhash": {"nprobe": 3}}}, "nprobe", "method:minhash")
    _refused(DedupConfig, {"method": {"dbscan": {}}, "exact_max_n": 5}, "exact_max_n")
    _refused(DedupConfig, {"method": {"kmeans": {}}}, "kmeans", "method")
    _refused(DedupConfig, {"scope": "galaxy"}, "scope", "galaxy")
    _refused(DedupConfig, {"method": {"faiss_graph": {"search": "pq"}}}, "search", "pq")


# ------------------------------------------------------------------------------------- attribute model
def test_attribute_model_default_is_the_head_with_no_config():
    cfg = _run(AttributeModelConfig, {})
    assert cfg.backend == HeadBackend() and cfg.backend.max_chars == 2000
    assert "base_model" not in _validate(AttributeModelConfig, {})["backend"]["head"]  # no LoRA field on the head


def test_attribute_model_lora_validates_and_its_fields_are_lora_settings():
    cfg = _run(AttributeModelConfig, {"backend": {"lora": {"lora_r": 4, "max_steps": 3, "device": "cpu"}}})
    b = cfg.backend
    assert isinstance(b, LoraBackend) and isinstance(b, LoraSettings)  # train_lora takes it as is
    assert (b.lora_r, b.max_steps, b.device, b.base_model) == (4, 3, "cpu", "embedded")
    # one definition: the LoRA variant's fields are LoraSettings' (+ the discriminator), nothing else
    assert set(LoraBackend.model_fields) - {"name"} == set(LoraSettings.model_fields)
    # the version settings: every LoRA knob but the device (as the dataclass gave before)
    assert b.version_settings() == {"base_model": "embedded", "learning_rate": 1e-4, "epochs": 1.0, "max_steps": 3,
                                    "lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.05, "max_length": 512,
                                    "batch_size": 4, "seed": 0}


def test_attribute_model_refuses_lora_fields_on_the_head_and_bad_backends():
    _refused(AttributeModelConfig, {"backend": {"head": {"lora_r": 4}}}, "lora_r", "backend:head")
    _refused(AttributeModelConfig, {"backend": {"lora": {"l2_grid": [1.0]}}}, "l2_grid", "backend:lora")
    _refused(AttributeModelConfig, {"backend": {"ridge": {}}}, "ridge", "backend")
    _refused(AttributeModelConfig, {"backend": "lora"}, "backend")


# ---------------------------------------------------------------------------------------------- selection
def test_selection_default_is_length_with_no_config():
    cfg = _run(SelectionConfig, {})
    assert cfg.method == LengthSelection() and cfg.method.total_samples == 100


@pytest.mark.parametrize("choice, expected", [
    ({"pass_rate": {"max_pass_rate": 0.25}}, PassRateSelection(max_pass_rate=0.25)),
    ({"difficulty": {"top_k": 7}}, DifficultySelection(top_k=7)),
    ({"length": {"length_unit": "tokens", "total_samples": 5}}, LengthSelection(length_unit="tokens", total_samples=5)),
])
def test_selection_other_methods_validate(choice, expected):
    assert _run(SelectionConfig, {"method": choice}).method == expected


def test_selection_refuses_another_methods_field_and_bad_choices():
    _refused(SelectionConfig, {"method": {"difficulty": {"total_samples": 5}}}, "total_samples", "method:difficulty")
    _refused(SelectionConfig, {"total_samples": 60}, "total_samples")  # the old flat shape
    _refused(SelectionConfig, {"method": {"random": {}}}, "random", "method")
    _refused(SelectionConfig, {"method": {"length": {"length_unit": "words"}}}, "length_unit", "words")


# ------------------------------------------------------------------------------------ reward resource
def _reward_job(resource: RewardResource):
    """A job whose one asset takes the reward resource (built in Python as `resource`): Dagster's own
    validation of the resource config."""
    seen = {}

    @dg.asset(name="scored")
    def scored(reward: RewardResource):
        seen["reward"] = reward
        return 0

    defs = dg.Definitions(assets=[scored], jobs=[dg.define_asset_job("score", [scored])],
                          resources={"reward": resource})
    return defs.resolve_job_def("score"), seen


def _reward_run(backend: dict | None, resource: RewardResource | None = None) -> RewardResource:
    job, seen = _reward_job(resource or RewardResource())
    run_config = {"resources": {"reward": {"config": {"backend": backend}}}} if backend else None
    assert job.execute_in_process(run_config=run_config).success
    return seen["reward"]


def _reward_refused(backend, *words: str):
    job, _ = _reward_job(RewardResource())
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"resources": {"reward": {"config": {"backend": backend}}}})
    for w in words:
        assert w in str(err.value), str(err.value)


def test_reward_default_is_the_judge_with_no_config():
    reward = _reward_run(None)
    assert reward.backend == JudgeReward() and reward.model_name == "judge:judge"
    assert RewardResource().backend.name == "judge" and RewardResource().backend.max_prompt_chars == 4000
    # the judge's fields only: no classifier or attributes field on it
    fields = dg.validate_run_config(_reward_job(RewardResource())[0], {})["resources"]["reward"]["config"]
    assert set(fields["backend"]["judge"]) == set(JudgeReward.model_fields) - {"name"}
    # a resource built in Python keeps its backend as the default (definitions.py: the judge's llm_config_file)
    built = _reward_run(None, RewardResource(backend=JudgeReward(llm_config_file="models.yaml", chunk=4)))
    assert (built.backend.llm_config_file, built.backend.chunk) == ("models.yaml", 4)


@pytest.mark.parametrize("choice, expected", [
    ({"classifier": {"model": "m", "engine": "vllm", "dtype": "bfloat16", "truncation_side": "right"}},
     ClassifierReward(model="m", engine="vllm", dtype="bfloat16", truncation_side="right")),
    ({"attributes": {"attribute_model": "0123456789abcdef", "attribute_weights": {"helpfulness": 1.0,
                                                                                  "verbosity": -0.5}}},
     AttributesReward(attribute_model="0123456789abcdef", attribute_weights={"helpfulness": 1.0, "verbosity": -0.5})),
    ({"judge": {"judge_model": "teacher", "aspects": ["honesty"], "max_tokens": 64}},
     JudgeReward(judge_model="teacher", aspects=["honesty"], max_tokens=64)),
])
def test_reward_other_backends_validate_and_reach_the_resource(choice, expected):
    reward = _reward_run(choice)
    assert reward.backend == expected
    reward.check()  # a valid config of its backend: no RewardConfigError
    assert reward.model_name == {"classifier": "classifier:m", "attributes": "attributes:0123456789abcdef",
                                 "judge": "judge:teacher"}[expected.name]
    # the same backend built in Python, and the launchpad choosing another over a Python-built one
    assert RewardResource(backend=expected).backend == expected
    assert _reward_run(choice, RewardResource(backend=ClassifierReward(model="x"))).backend == expected


def test_reward_refuses_another_backends_field_and_bad_choices():
    _reward_refused({"judge": {"model": "m"}}, "model", "backend:judge")
    _reward_refused({"classifier": {"attribute_weights": {"helpfulness": 1.0}}}, "attribute_weights",
                    "backend:classifier")
    _reward_refused({"attributes": {"judge_model": "judge"}}, "judge_model", "backend:attributes")
    _reward_refused({"rm": {}}, "rm", "backend")
    _reward_refused("classifier", "backend")  # the old flat shape
    _reward_refused({"classifier": {"engine": "tgi"}}, "engine", "tgi")
    _reward_refused({"classifier": {"score_output": "rewards"}}, "score_output", "rewards")
    with pytest.raises(ValueError, match="dtype"):  # built in Python: pydantic names the field
        ClassifierReward(dtype="int4")
