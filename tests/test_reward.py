"""The reward resource (resources/reward/): the judge on the embedded model over real HH-RLHF pairs
(structure, parsed scores or counted failures, a cached re-run makes no model call), the classifier
code path for real on the bundled SmolLM2 loaded as a 1-label sequence classifier, the `attributes`
backend's error, the config checks, and the vLLM request mapping."""

import math

import dagster as dg
import pytest
import torch
import yaml

from resources.llm import LLMResource, embedded_model_dir
from resources.reward import (ASPECTS, RATING, AttributesReward, ClassifierReward, JudgeReward, RewardConfigError,
                              RewardFailure, RewardResource, RewardScore, vllm_reward_engine_kwargs,
                              vllm_reward_request)
from resources.reward.classifier import render_ids
from resources.reward.judge import TEMPLATE, judge_row
from resources.storage import StorageResource

from .helpers import hh_pairs



# ---------------------------------------------------------------------------------------- template
def test_rating_template_is_versioned_with_en_and_ja():
    data = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    assert data["task"] == TEMPLATE.stem == RATING.name and str(data["version"])
    assert {"en", "ja"} <= set(data["templates"])
    schema = data["json_schema"]
    # the first required key is what local engines prefill: a rating, not the free-text reason
    assert schema["required"] == ["instruction_following", "truthfulness", "honesty", "helpfulness", "reason"]
    assert ASPECTS == ("instruction_following", "truthfulness", "honesty", "helpfulness")
    for a in ASPECTS:
        assert schema["properties"][a] == {"type": "integer", "minimum": 1, "maximum": 5}
    row = judge_row([{"role": "user", "content": "猫について教えて"}], "猫は動物です。", language="ja",
                    max_prompt_chars=4000, max_response_chars=2000)
    msgs = RATING.render(row)
    assert "指示" in msgs[-1]["content"] and "猫は動物です。" in msgs[-1]["content"]


def test_judge_row_truncates_and_marks_it():
    turns = [{"role": "user", "content": "a" * 50}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c" * 50}]
    row = judge_row(turns, "r" * 30, language=None, max_prompt_chars=40, max_response_chars=10)
    assert row["truncated"] and row["conversation"].endswith("c" * 40) and row["response"].startswith("r" * 10)
    assert len(row["response"]) < 30
    full = judge_row(turns[:1], "ok", language=None, max_prompt_chars=4000, max_response_chars=2000)
    assert full == {"conversation": "a" * 50, "response": "ok", "truncated": False}


# ---------------------------------------------------------------------------------------- judge (real)
def test_judge_on_embedded_model_over_real_hh_pairs(tmp_path):
    """3 real HH-RLHF pairs (chosen and rejected: 6 responses) + one malformed pair, rated by the
    embedded SmolLM2-135M through an LLM session. Each response is a parsed 1-5 score or a counted
    failure with the raw answer; a re-run (also with other aspects, also through a passed-in
    LLMResource) is all cache hits."""
    storage = StorageResource(root=str(tmp_path / "storage"))
    pairs = [(p, r) for p, c, rj in hh_pairs(3) for r in (c, rj)]
    pairs.append((pairs[0][0], None))  # not a response: a bad_input failure, no model call
    reward = RewardResource()
    res = reward.score(None, pairs, storage=storage)
    assert len(res) == 7
    assert isinstance(res[6], RewardFailure) and res[6].reason == "bad_input" and "pair 6" in res[6].error
    for v in res[:6]:
        assert isinstance(v, (RewardScore, RewardFailure))
        if isinstance(v, RewardScore):
            assert set(v.aspects) == set(ASPECTS) and all(1 <= x <= 5 and x == int(x) for x in v.aspects.values())
            assert v.overall == pytest.approx(sum(v.aspects.values()) / 4)
            assert v.backend == "judge" and "SmolLM2-135M" in v.model and not v.truncated
        else:  # counted, with the model's answer kept; never a default score
            assert v.reason in ("parse_failed", "llm_failed") and (v.raw or v.reason == "llm_failed")
    md = res.metadata
    assert md["llm_requests"] == md["llm_calls"] == 6 and md["llm_cache_hits"] == 0
    assert md["reward_pairs"] == 7 and md["reward_scored"] + md["reward_failed"] == 7
    assert md["reward_failed_by_reason"].get("bad_input") == 1
    assert md["llm_parse_failures"] == md["reward_failed_by_reason"].get("parse_failed", 0)
    assert md["reward_model"].startswith("judge:embedded:") and md["reward_template_version"] == RATING.version
    assert (tmp_path / "storage" / "_llm_cache" / "llm_cache.sqlite").exists()

    again = reward.score(None, pairs, storage=storage)
    assert again.metadata["llm_calls"] == 0 and again.metadata["llm_cache_hits"] == 6
    assert [str(v) if isinstance(v, RewardFailure) else v.aspects for v in again] == \
           [str(v) if isinstance(v, RewardFailure) else v.aspects for v in res]

    # another aspect selection and the asset's own LLMResource: same requests, so 0 model calls
    llm = LLMResource()
    helpful = RewardResource(backend=JudgeReward(aspects=["helpfulness"])).score(None, pairs, llm=llm, storage=storage)
    assert helpful.metadata["llm_calls"] == 0
    for a, b in zip(helpful, res):
        if isinstance(b, RewardScore):
            assert a.overall == b.aspects["helpfulness"]
    llm.close()
    reward.close()


def test_reward_resource_in_a_materialisation(tmp_path):
    """The resource wired into Definitions-style resources: an asset scores through it, the engines it
    made are closed after the step."""
    calls = {}

    @dg.asset
    def rated(context, reward: RewardResource, llm: LLMResource, storage: StorageResource):
        res = reward.score(context, [("What is 2+3?", "2 + 3 = 5")], llm=llm, storage=storage)
        calls.update(res.metadata)
        return len(res)

    llm = LLMResource()
    out = dg.materialize([rated], resources={"reward": RewardResource(), "llm": llm,
                                             "storage": StorageResource(root=str(tmp_path / "s"))})
    assert out.success and calls["reward_pairs"] == 1 and calls["llm_requests"] == 1
    assert llm._engines == {}  # closed by teardown_after_execution


# ---------------------------------------------------------------------------------------- classifier (real)
@pytest.fixture(scope="module")
def smol_classifier():
    """The bundled SmolLM2 weights loaded as AutoModelForSequenceClassification(num_labels=1). Its score
    head is RANDOMLY INITIALISED (not in the checkpoint): these tests check the code path (chat
    template, batching, truncation, output extraction), not the quality of the scores."""
    torch.manual_seed(0)
    reward = RewardResource(backend=ClassifierReward(model=embedded_model_dir(), num_labels=1, batch_size=4,
                                                     max_length=512))
    yield reward
    reward.close()


def test_classifier_batches_equal_one_by_one(smol_classifier):
    pairs = [(p, r) for p, c, rj in hh_pairs(5) for r in (c, rj)]
    res = smol_classifier.score(None, pairs)
    assert all(isinstance(v, RewardScore) and v.backend == "classifier" and math.isfinite(v.overall) for v in res)
    assert res.metadata["reward_engine"] == "transformers" and res.metadata["reward_scored"] == 10
    assert len({round(v.overall, 6) for v in res}) > 1  # a random head, but not a constant
    one_by_one = [smol_classifier.score(None, [p])[0].overall for p in pairs]
    assert max(abs(a.overall - b) for a, b in zip(res, one_by_one)) < 1e-4
    # plain prompt text = one user turn
    (a,) = smol_classifier.score(None, [("What is 2+3?", "5")])
    (b,) = smol_classifier.score(None, [([{"role": "user", "content": "What is 2+3?"}], "5")])
    assert a.overall == b.overall


def sharing(base: RewardResource, **update) -> RewardResource:
    """A resource with other backend settings on the same loaded model (model_copy shares the engines dict)."""
    clone = base.model_copy(update={"backend": base.backend.model_copy(update=update)})
    assert clone._engines is base._engines
    return clone


def test_classifier_renders_the_chat_template(smol_classifier):
    engine = smol_classifier._classifier()
    messages, response = hh_pairs(1)[0][:2]
    ids, truncated = render_ids(engine.tok, messages, response, 512)
    expected = engine.tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    assert engine.tok.decode(ids) == expected and not truncated
    assert expected.endswith(f"<|im_start|>assistant\n{response}<|im_end|>\n")
    assert expected.count("<|im_start|>user\n") == sum(m["role"] == "user" for m in messages)


def test_classifier_truncates_at_max_length(smol_classifier):
    messages, response = hh_pairs(1)[0][:2]
    engine = smol_classifier._classifier()
    full, cut = render_ids(engine.tok, messages, response, 0)
    assert not cut and len(full) > 64
    assert render_ids(engine.tok, messages, response, 64, "left") == (full[-64:], True)  # the response stays
    assert render_ids(engine.tok, messages, response, 64, "right") == (full[:64], True)
    # through score(): the truncated pair is marked and scored on its last 64 tokens
    (v,) = sharing(smol_classifier, max_length=64).score(None, [(messages, response)])
    assert v.truncated and v.overall == pytest.approx(engine.scores([full[-64:]])[0][0], abs=1e-5)
    (w,) = sharing(smol_classifier, max_length=64, truncation_side="right").score(None, [(messages, response)])
    assert w.truncated and w.overall == pytest.approx(engine.scores([full[:64]])[0][0], abs=1e-5)
    (u,) = smol_classifier.score(None, [(messages, response)])
    assert not u.truncated and u.overall == pytest.approx(engine.scores([full])[0][0], abs=1e-5)


def test_classifier_failures_are_counted_values(smol_classifier, monkeypatch):
    engine = smol_classifier._classifier()
    pairs = [("Say hi.", "hi"), ("Say a long thing.", "long " * 40), ("Say bye.", "bye")]
    real_forward = engine._forward

    def flaky(seqs, score_output):  # the long item breaks any batch it is in (an OOM, say)
        if any(len(s) > 60 for s in seqs):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_forward(seqs, score_output)

    monkeypatch.setattr(engine, "_forward", flaky)
    res = smol_classifier.score(None, pairs)
    assert isinstance(res[0], RewardScore) and isinstance(res[2], RewardScore)
    assert isinstance(res[1], RewardFailure) and res[1].reason == "classifier_failed" and "simulated" in res[1].error
    assert res.metadata["reward_failed_by_reason"] == {"classifier_failed": 1}

    monkeypatch.setattr(engine, "_forward", lambda seqs, score_output: ([float("nan")] * len(seqs), None))
    (nan,) = smol_classifier.score(None, pairs[:1])
    assert isinstance(nan, RewardFailure) and nan.reason == "non_finite"


def test_classifier_multi_objective_outputs_become_aspects():
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    reward = RewardResource(backend=ClassifierReward(model=embedded_model_dir(), num_labels=3, aspect_names=names,
                                                     max_length=256))
    (v,) = reward.score(None, [("What is 2+3?", "5")])
    assert list(v.aspects) == names and v.overall == pytest.approx(v.aspects["a"])  # logits[:, 0] is the score
    bad = sharing(reward, aspect_names=["a", "b"])
    with pytest.raises(RewardConfigError, match="aspect_names has 2 names but .* 3 columns"):
        bad.score(None, [("What is 2+3?", "5")])
    reward.close()


# ---------------------------------------------------------------------------------------- errors and config
def test_attributes_backend_without_a_trained_model_is_a_clear_error(tmp_path):
    from resources.attributes import AttributeModelError
    from resources.storage import StorageResource

    storage = StorageResource(root=str(tmp_path))
    with pytest.raises(RewardConfigError, match=r"backend 'attributes' has no attribute model: the scoring asset "
                                                r"passes the version of attribute_model's latest materialization"):
        RewardResource(backend=AttributesReward()).score(None, [("q", "a")], storage=storage)
    # a pinned version (or the one the asset passes) names its folder; nothing there is a clear error
    with pytest.raises(AttributeModelError, match=r"models/attribute_model/0123456789abcdef: no model.json .*"
                                                  r"materialise attribute_model"):
        RewardResource(backend=AttributesReward(attribute_model="0123456789abcdef")).score(None, [("q", "a")],
                                                                                           storage=storage)
    with pytest.raises(AttributeModelError, match="is not a version name"):
        RewardResource(backend=AttributesReward()).score(None, [("q", "a")], storage=storage,
                                                         attribute_version="..")


def test_the_reward_gets_the_attribute_model_through_the_graph():
    """The attributes backend read `<storage>/models/attribute_model/LATEST`: the scoring assets had no
    lineage edge to attribute_model. Now they list it upstream and take the version its latest
    materialization recorded."""
    from posttrain_assets.common.metadata import REWARD_DEPS, attribute_model_version
    from posttrain_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for asset in ("preference_pairs", "quality_tags"):
        assert dg.AssetKey("attribute_model") in graph.get(dg.AssetKey(asset)).parent_keys, asset

    seen = []

    @dg.asset(deps=list(REWARD_DEPS))
    def scorer(context: dg.AssetExecutionContext):
        for reward in (RewardResource(), RewardResource(backend=AttributesReward(attribute_model="pinned")),
                       RewardResource(backend=AttributesReward())):
            seen.append(attribute_model_version(context, reward))

    with dg.DagsterInstance.ephemeral() as instance:
        res = dg.materialize([scorer], instance=instance, raise_on_error=False)
        assert not res.success and seen == [None, None]
        failure = res.get_step_failure_events()[0].event_specific_data.error.message
        assert "scorer: the reward backend 'attributes' scores with the attribute_model asset's latest " \
               "materialization, and there is none with a version: materialise attribute_model" in failure
        instance.report_runless_asset_event(dg.AssetMaterialization("attribute_model",
                                                                    metadata={"version": "0123456789abcdef"}))
        seen.clear()
        assert dg.materialize([scorer], instance=instance).success
        assert seen == [None, None, "0123456789abcdef"]


@pytest.mark.parametrize("backend, message", [
    (AttributesReward(attribute_weights={"kindness": 1.0}),
     "attribute_weights must be a non-empty mapping over quality, toxicity"),
    (JudgeReward(aspects=["helpfulness", "harmlessness"]),
     "aspects must be a non-empty subset of instruction_following"),
    (JudgeReward(aspects=[]), "aspects must be a non-empty subset"),
    (JudgeReward(aspects=["honesty", "honesty"]), "aspects must be without repeats"),
    (JudgeReward(max_tokens=4), "max_tokens must be >= 16"),
    (ClassifierReward(), "backend 'classifier' needs `model`"),
    (ClassifierReward(model="m", device="tpu"), "device must be auto, cpu, cuda or cuda:N"),
    (ClassifierReward(model="m", max_length=0), "max_length must be >= 8"),
    (ClassifierReward(model="m", batch_size=0), "batch_size must be >= 1"),
])
def test_config_is_checked_before_any_model_loads(backend, message):
    reward = RewardResource(backend=backend)
    with pytest.raises(RewardConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reward.score(None, [("q", "a")])
    assert reward._engines == {}


@pytest.mark.parametrize("backend, field, value", [
    ({"rm": {}}, "backend", "rm"),  # not a backend
    ({"classifier": {"model": "m", "engine": "tgi"}}, "engine", "tgi"),
    ({"classifier": {"model": "m", "dtype": "int4"}}, "dtype", "int4"),
    ({"classifier": {"model": "m", "score_output": "rewards"}}, "score_output", "rewards"),
    ({"classifier": {"model": "m", "truncation_side": "middle"}}, "truncation_side", "middle"),
])
def test_bad_choices_are_config_errors_naming_the_field(backend, field, value):
    """The choices were strings checked when scoring; now the config's types refuse them before any run
    (Dagster's run config validation, and pydantic when the resource is built in Python)."""
    @dg.asset
    def rated(reward: RewardResource):
        return 0

    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.materialize([rated], resources={"reward": RewardResource()},
                       run_config={"resources": {"reward": {"config": {"backend": backend}}}})
    assert field in str(err.value) and value in str(err.value), str(err.value)
    if "classifier" in backend:  # the same choice in Python: a pydantic error naming the field
        with pytest.raises(ValueError, match=field):
            ClassifierReward(**backend["classifier"])


def test_languages_must_match_pairs():
    with pytest.raises(ValueError, match="languages: 1 values for 2 pairs"):
        RewardResource().score(None, [("q", "a"), ("q", "b")], languages=["en"])


def test_bad_pairs_fail_alone_without_a_model():
    res = RewardResource().score(None, ["just text", ("", "a"), ([{"role": "bot", "content": "x"}], "a"), ("q", 3)])
    assert [v.reason for v in res] == ["bad_input"] * 4
    assert "a pair is (messages or prompt, response)" in res[0].error and "prompt: empty" in res[1].error
    assert "prompt[0]" in res[2].error and "response: expected a string" in res[3].error
    assert "llm_calls" not in res.metadata  # nothing valid: no session was opened


# ---------------------------------------------------------------------------------------- vLLM mapping
def test_vllm_reward_mapping():
    cfg = RewardResource(backend=ClassifierReward(model="Skywork/Skywork-Reward-V2-Llama-3.1-8B", engine="vllm",
                                                  dtype="bfloat16", revision="main", max_length=8192,
                                                  gpu_memory_utilization=0.5))
    assert vllm_reward_engine_kwargs(cfg.backend) == {
        "model": "Skywork/Skywork-Reward-V2-Llama-3.1-8B", "runner": "pooling", "dtype": "bfloat16",
        "trust_remote_code": False, "max_model_len": 8192, "gpu_memory_utilization": 0.5, "seed": 0, "revision": "main"}
    prompts, kw = vllm_reward_request([[1, 2, 3], [4]])
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert kw == {"pooling_task": "classify", "pooling_params": {"use_activation": False}}  # the raw logit
    with pytest.raises(RewardConfigError, match="score_output 'score' .* needs engine 'transformers'"):
        sharing(cfg, score_output="score").score(None, [("q", "a")])
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RewardConfigError, match="classifier engine 'vllm' needs vllm"):
            cfg.score(None, [("q", "a")])
        pytest.skip("vllm is not installed (GPU-only `gpu` extra): the reward engine itself is not run here")
