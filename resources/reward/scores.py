"""The values a reward backend returns: a `RewardScore` per scored pair or a `RewardFailure` (counted,
never replaced by a default score), in a `RewardResults` list that also carries the run's counts and
metadata. Also the input check every backend shares (`normalize_pair`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Union

ROLES = ("system", "user", "assistant", "tool")


class RewardConfigError(ValueError):
    """The reward resource's configuration cannot work (raised before any model is loaded)."""


class RewardUnavailable(RewardConfigError):
    """A configured backend that does not exist yet."""


@dataclass
class RewardScore:
    overall: float  # the judge: mean of the configured aspects (1-5); a classifier: its scalar reward
    aspects: dict[str, float] = field(default_factory=dict)  # judge: per aspect; classifier: named outputs
    model: str = ""  # "<backend>:<model>" of what produced the score
    backend: str = ""  # judge | classifier
    reason: str = ""  # the judge's one-sentence reason
    truncated: bool = False  # the input was cut (judge: characters; classifier: max_length tokens)

    ok = True


@dataclass
class RewardFailure:
    reason: str  # bad_input | llm_failed | parse_failed | classifier_failed | non_finite
    error: str
    raw: str = ""  # the judge's answer, when there was one
    model: str = ""

    ok = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.error}"


RewardValue = Union[RewardScore, RewardFailure]


class RewardResults(list):
    """`list[RewardScore | RewardFailure]`, one per input pair, in input order, plus `metadata`
    (counts, the model, and for the judge the LLM session's calls / cache hits / tokens)."""

    def __init__(self, values=(), metadata: Optional[dict] = None):
        super().__init__(values)
        self.metadata: dict = dict(metadata or {})

    @property
    def scores(self) -> list[RewardScore]:
        return [v for v in self if isinstance(v, RewardScore)]

    @property
    def failures(self) -> list[RewardFailure]:
        return [v for v in self if isinstance(v, RewardFailure)]

    def counts(self) -> dict:
        failed = Counter(f.reason for f in self.failures)
        return {"reward_pairs": len(self), "reward_scored": len(self.scores), "reward_failed": sum(failed.values()),
                "reward_failed_by_reason": dict(sorted(failed.items())),
                "reward_truncated": sum(1 for s in self.scores if s.truncated)}


def normalize_pair(pair: Any) -> tuple[list[dict], str]:
    """(messages or prompt text, response) -> (messages, response). The prompt is the conversation
    before the response: a string is one user turn; a list holds {role, content} turns. Raises
    ValueError naming what is wrong (the caller turns it into a `bad_input` failure)."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"a pair is (messages or prompt, response), got {type(pair).__name__}"
                         + (f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else ""))
    prompt, response = pair
    if not isinstance(response, str):
        raise ValueError(f"response: expected a string, got {type(response).__name__}")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt: empty")
        return [{"role": "user", "content": prompt}], response
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(f"prompt: expected a string or a non-empty list of messages, got {type(prompt).__name__}")
    messages = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"prompt[{i}]: expected {{role: {'/'.join(ROLES)}, content: str}}, got {m!r:.80}")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages, response
