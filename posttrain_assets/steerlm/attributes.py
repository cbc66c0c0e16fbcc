"""SteerLM attributes (NeMo-Aligner's, kept exact): names and order, the 0-4 integer scale, the
mappings from each labelled source, the label string, and the two training formats. Pure.

Order (NeMo-Aligner `examples/nlp/data/steerlm/common.py`): OASST's `quality, toxicity, humor,
creativity`, then HelpSteer's `helpfulness, correctness, coherence, complexity, verbosity`.

Mappings to the 0-4 scale:
- OASST (`labels: {name: {value, count}}` on a reply, values in [0, 1]): `round(value * 4)` with
  Python's `round` (NeMo's; halves go to the even neighbour: 0.625 -> 2, 0.875 -> 4).
- HelpSteer / HelpSteer2: already integers 0-4 (checked, not rounded).
- Japanese OASST edits (`oasst2_ja_edited`, the editor's 1-5 `quality` of a hand-audited
  translation): `quality - 1` (five levels onto five levels, order kept: 1 -> 0 ... 5 -> 4); `-1`
  (not rated) is missing. It rates the translation's quality, so it only fills `quality`.
A missing attribute is `None` here and in the tables, `-100` (NeMo's ignore value) in a training
target, and is left out of the label string — never filled with a default.

Label string (NeMo): `quality:4,toxicity:0,...`, only the attributes present, in the order above.

Formats of one labelled turn:
- SteerLM (NeMo): `<extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{prompt}\\n<extra_id_1>Assistant\\n<extra_id_2>{labels}\\n{response}`
  (a multi-turn conversation repeats the User / Assistant blocks, each assistant turn with its labels);
- llm-jp-sft (the seed's `build_sft_data`): `以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。`
  then per turn `\\n\\n### 指示:\\n{prompt}`, for a labelled assistant turn `\\n{labels}`, then
  `\\n\\n### 応答:\\n{response}`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

# the names, order and scale are the model layer's contract (resources/attributes/names.py)
from resources.attributes.names import (ATTRIBUTES, HELPSTEER_ATTRIBUTES, IGNORE, OASST_ATTRIBUTES, SCALE_MAX,
                                        clamp_round)

STEERLM_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions.")
LLMJP_SYSTEM = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
LLMJP_USER, LLMJP_ASSISTANT = "\n\n### 指示:\n", "\n\n### 応答:\n"


class AttributeMappingError(ValueError):
    """A label that cannot be mapped; the message names the attribute and the value."""


def oasst_scale(value: Any, name: str = "value") -> int:
    """An OASST label value in [0, 1] -> 0-4 (`round(value * 4)`, NeMo's rounding)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise AttributeMappingError(f"{name}: an OASST label value must be a number in [0, 1], got {value!r}")
    return round(value * SCALE_MAX)


def oasst_labels(labels: Optional[Mapping[str, Any]]) -> dict[str, int]:
    """OASST's `labels` of a reply ({name: {value, count}} or {name: value}) -> the OASST attributes present."""
    out: dict[str, int] = {}
    for name in OASST_ATTRIBUTES:
        raw = (labels or {}).get(name)
        if raw is None:
            continue
        value = raw.get("value") if isinstance(raw, Mapping) else raw
        if value is None:
            continue
        out[name] = oasst_scale(value, f"labels.{name}")
    return out


def helpsteer_labels(row: Mapping[str, Any]) -> dict[str, int]:
    """HelpSteer / HelpSteer2 score columns (integers 0-4; a missing column is missing)."""
    out: dict[str, int] = {}
    for name in HELPSTEER_ATTRIBUTES:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SCALE_MAX:
            raise AttributeMappingError(f"{name}: a HelpSteer score must be an integer 0-{SCALE_MAX}, got {value!r}")
        out[name] = value
    return out


def ja_quality(value: Any) -> dict[str, int]:
    """oasst2_ja_edited's 1-5 `quality` -> {quality: value - 1}; -1 (not rated) -> {} (missing)."""
    if value == -1 or value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise AttributeMappingError(f"quality: the editor's rating must be an integer 1-5 or -1, got {value!r}")
    return {"quality": value - 1}


def label_vector(labels: Mapping[str, int]) -> list[Optional[int]]:
    """The 9 attributes in order, None where missing."""
    unknown = sorted(set(labels) - set(ATTRIBUTES))
    if unknown:
        raise AttributeMappingError(f"unknown attribute(s) {', '.join(unknown)} (known: {', '.join(ATTRIBUTES)})")
    return [labels.get(a) for a in ATTRIBUTES]


def training_target(vector: Iterable[Optional[int]]) -> list[int]:
    """A label vector as NeMo's regression target: missing -> IGNORE (-100)."""
    return [IGNORE if v is None else int(v) for v in vector]


def label_string(labels: Mapping[str, Optional[int]]) -> str:
    """`quality:4,toxicity:0,...`: the attributes present (not None), in NeMo's order."""
    label_vector({k: v for k, v in labels.items() if v is not None})  # unknown names are an error
    return ",".join(f"{a}:{int(labels[a])}" for a in ATTRIBUTES if labels.get(a) is not None)


def parse_label_string(text: str) -> dict[str, int]:
    """The inverse of label_string; raises AttributeMappingError naming the bad part."""
    out: dict[str, int] = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, sep, value = part.partition(":")
        name = name.strip()
        if not sep or name not in ATTRIBUTES or not value.strip().isdigit() or int(value) > SCALE_MAX:
            raise AttributeMappingError(f"label string part {part!r}: expected <attribute>:<0-{SCALE_MAX}>")
        if name in out:
            raise AttributeMappingError(f"label string: {name} appears twice")
        out[name] = int(value)
    if list(out) != [a for a in ATTRIBUTES if a in out]:
        raise AttributeMappingError(f"label string {text!r}: attributes out of NeMo's order ({', '.join(ATTRIBUTES)})")
    return out


def _turns(conversation: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if not conversation or conversation[-1].get("role") != "assistant":
        raise AttributeMappingError("a SteerLM example ends with the assistant's turn")
    for i, turn in enumerate(conversation):
        if turn.get("role") != ("user" if i % 2 == 0 else "assistant") or not isinstance(turn.get("content"), str):
            raise AttributeMappingError(f"turn {i}: expected alternating user / assistant turns with text, got "
                                  f"{turn.get('role')!r}")
    return conversation


def steerlm_text(conversation: list[Mapping[str, Any]], system: str = STEERLM_SYSTEM) -> str:
    """NeMo's SteerLM format; each assistant turn's `labels` (a mapping) becomes its label string."""
    out = f"<extra_id_0>System\n{system}\n"
    turns = _turns(conversation)
    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            out += f"<extra_id_1>User\n{turn['content']}\n"
        else:
            out += f"<extra_id_1>Assistant\n<extra_id_2>{label_string(turn.get('labels') or {})}\n{turn['content']}"
            if i < len(turns) - 1:
                out += "\n"
    return out


def llmjp_text(conversation: list[Mapping[str, Any]], system: str = LLMJP_SYSTEM) -> str:
    """The llm-jp-sft format of the seed's build_sft_data (labels before each assistant answer)."""
    out = system
    for turn in _turns(conversation):
        if turn["role"] == "user":
            out += LLMJP_USER + turn["content"]
        else:
            labels = label_string(turn.get("labels") or {})
            out += (f"\n{labels}" if labels else "") + LLMJP_ASSISTANT + turn["content"]
    return out


__all__ = ["ATTRIBUTES", "HELPSTEER_ATTRIBUTES", "IGNORE", "LLMJP_SYSTEM", "OASST_ATTRIBUTES", "SCALE_MAX",
           "STEERLM_SYSTEM", "AttributeMappingError", "clamp_round", "helpsteer_labels", "ja_quality", "label_string",
           "label_vector", "llmjp_text", "oasst_labels", "oasst_scale", "parse_label_string", "steerlm_text",
           "training_target"]
