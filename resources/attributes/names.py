"""The attribute model's data contract: the 9 SteerLM attributes (NeMo-Aligner's names and order),
the 0-4 scale, and the render of one (conversation, reply) the model trains and predicts on. Pure.

Order (NeMo-Aligner `examples/nlp/data/steerlm/common.py`): OASST's `quality, toxicity, humor,
creativity`, then HelpSteer's `helpfulness, correctness, coherence, complexity, verbosity`. The
mappings from each labelled source and the training formats are the steerlm stage's
(posttrain_assets/steerlm/attributes.py); what a predictor and its users need lives here."""

from __future__ import annotations

OASST_ATTRIBUTES = ("quality", "toxicity", "humor", "creativity")
HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ATTRIBUTES = OASST_ATTRIBUTES + HELPSTEER_ATTRIBUTES
SCALE_MAX = 4
IGNORE = -100  # NeMo's value for a missing attribute in a training target (masked out of the loss)

_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def clamp_round(value: float) -> int:
    """A predicted attribute -> the 0-4 scale (NeMo's attribute_annotate: clamp to [0, 4], then round)."""
    return int(round(min(max(float(value), 0.0), float(SCALE_MAX))))


def render(messages: list[dict], response: str) -> str:
    """The text of one example: the conversation up to the reply, then the reply
    (`User: ...\\n\\nAssistant: ...`), as training rows and predictions see it."""
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}"
                       for m in [*messages, {"role": "assistant", "content": response}])
