"""Backend `judge`: an LLM rates each response 1-5 on UltraFeedback's aspects (instruction following,
truthfulness, honesty, helpfulness) with the task `ultrafeedback_rating` (templates/, versioned, en + ja)
through an LLM session, so every answer is cached. An answer that does not parse or leaves the 1-5
range is a counted `parse_failed`, never a default rating.

On the CPU default (the embedded SmolLM2-135M) this judge carries no signal: on the first 40 HH-RLHF
harmless-base pairs it put chosen above rejected in 0 (below in 2, tied in 11, a failed side in 27;
32 of 80 answers unparseable, 43 of the 48 parsed ones all 1s), and it ranked Magpie's responses
against ArmoRM in only 1 of 5 instructions (`python -m bench.reward`). It is there so the graph runs
on a CPU; point `judge_model` at a real model (vLLM, a server) or use the classifier for data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from resources.llm.tasks import Task

from .scores import RewardFailure, RewardScore

TEMPLATE = Path(__file__).parent / "templates" / "ultrafeedback_rating.yaml"
RATING = Task.from_file(TEMPLATE)
#: UltraFeedback's four aspects, in the template's (and the schema's) order
ASPECTS: tuple[str, ...] = tuple(k for k in RATING.json_schema["required"] if k != "reason")

NAMES = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def conversation_text(messages: list[dict]) -> str:
    """The instruction shown to the judge: the user text alone for one user turn, else role-tagged turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def judge_row(messages: list[dict], response: str, *, language: Optional[str], max_prompt_chars: int,
              max_response_chars: int) -> dict:
    """The task row for one pair. A conversation over `max_prompt_chars` keeps its end (the latest turns);
    a response over `max_response_chars` keeps its beginning; both are marked `truncated`."""
    conv, resp, truncated = conversation_text(messages), response, False
    if max_prompt_chars and len(conv) > max_prompt_chars:
        conv, truncated = "[...]\n" + conv[-max_prompt_chars:], True
    if max_response_chars and len(resp) > max_response_chars:
        resp, truncated = resp[:max_response_chars] + "\n[...]", True
    row = {"conversation": conv, "response": resp, "truncated": truncated}
    if language:
        row["language"] = language
    return row


def to_score(result, aspects: tuple[str, ...], model: str) -> RewardScore | RewardFailure:
    """One session `TaskResult` (n=1) -> a score (mean of `aspects`) or the failure as it came."""
    (sample,) = result.samples
    if not isinstance(sample, dict):  # a TaskFailure: llm_failed | parse_failed
        return RewardFailure(sample.reason, sample.error, raw=sample.raw, model=model)
    ratings = {a: float(sample[a]) for a in ASPECTS}
    chosen = [ratings[a] for a in aspects]
    return RewardScore(overall=sum(chosen) / len(chosen), aspects=ratings, model=model, backend="judge",
                       reason=str(sample.get("reason", "")).strip(), truncated=bool(result.row.get("truncated")))
