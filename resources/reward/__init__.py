"""Reward scores for (prompt, response) pairs: one interface (`RewardResource.score`), three backends.

    resource.py     RewardResource (config, engines owned per process, `score`); its `backend` is one of
                    JudgeReward | ClassifierReward | AttributesReward (a discriminated union of configs)
    judge.py        backend `judge`: UltraFeedback's 1-5 aspect ratings through an LLM session (cached)
    classifier.py   backend `classifier`: a sequence-classification reward model (transformers / vLLM)
    scores.py       RewardScore, RewardFailure, RewardResults, the input check
    templates/      ultrafeedback_rating.yaml (versioned, en + ja)

Backend `attributes`: the SteerLM attribute model artifact (resources/attributes/), loaded from the
storage root by version; `overall` = a weighted sum of its predictions."""

from .classifier import ARMORM_ATTRIBUTES, vllm_reward_engine_kwargs, vllm_reward_request
from .judge import ASPECTS, RATING
from .resource import BACKENDS, AttributesReward, ClassifierReward, JudgeReward, RewardBackend, RewardResource
from .scores import (RewardConfigError, RewardFailure, RewardResults, RewardScore, RewardUnavailable,
                     normalize_pair)

__all__ = ["ARMORM_ATTRIBUTES", "ASPECTS", "AttributesReward", "BACKENDS", "ClassifierReward", "JudgeReward",
           "RATING", "RewardBackend", "RewardConfigError", "RewardFailure", "RewardResource", "RewardResults",
           "RewardScore", "RewardUnavailable", "normalize_pair", "vllm_reward_engine_kwargs", "vllm_reward_request"]
