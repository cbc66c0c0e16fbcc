"""attribute_training_data: the labelled replies of one `attributes` source -> rows the attribute
model trains on. Pure (Arrow in, Arrow out).

Input: the source's merged_prompts (the adapter's records, before the global dedup: the attribute
model learns from every labelled reply a source has, whatever the SFT export keeps). A record with a
response and human labels becomes one row:
- `text`: the conversation up to the reply, then the reply (`User: ...\\n\\nAssistant: ...`);
- `labels`: the 9 attributes in NeMo's order, null where the source has no label (OASST replies: the
  4 OASST attributes; HelpSteer: the 5 HelpSteer ones; oasst2_ja_edited: `quality` only);
- `group`: the OASST message tree, else the prompt (HelpSteer rates up to 4 responses per prompt):
  `split` is drawn per group with a seeded hash, so no tree or prompt is on both sides.

Removed (counted): records with no response (a prompter message nobody answered), replies with no
attribute label (user-turn labels are never used: the OASST adapter keeps only the reply's).
Rejected: a label that cannot be mapped (reason `bad_label`, the attribute named)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

import pyarrow as pa

from resources.attributes.names import render  # the model layer's render of one example
from resources.reasons import Reason

from ..common.accounting import RowIssue, raw_preview
from ..common.schemas import MESSAGE_TYPE
from .attributes import (ATTRIBUTES, HELPSTEER_ATTRIBUTES, OASST_ATTRIBUTES, AttributeMappingError,
                         helpsteer_labels, ja_quality, label_string, label_vector, oasst_labels)
from .head import split_groups

SCHEMA = pa.schema([
    ("id", pa.string()),  # all_prompt_id of the record (one labelled reply)
    ("source", pa.string()),
    ("group", pa.string()),  # OASST message tree or prompt hash: the split unit
    ("split", pa.string()),  # train | val
    ("language", pa.string()),
    ("text", pa.string()),  # the conversation up to the reply + the reply
    ("messages", MESSAGE_TYPE),  # the same as turns, the reply last
    ("response", pa.string()),
    ("labels", pa.list_(pa.int64())),  # 9 values in ATTRIBUTES order, null = missing
    ("label_string", pa.string()),  # NeMo's string of the labels present
    ("n_labels", pa.int64()),
])


def source_labels(raw: Optional[Mapping[str, Any]]) -> dict[str, int]:
    """A record's human labels (as its adapter kept them) -> the attributes on the 0-4 scale.

    OASST names (values in [0, 1], or {value, count}) -> round(v * 4); HelpSteer names (0-4 integers)
    as they are; `editor_quality` (oasst2_ja_edited's 1-5) -> quality - 1, -1 = missing. Other keys
    (OASST's spam, lang_mismatch, ..., and its {value, count} `helpfulness`) are not attributes and are
    ignored."""
    raw = dict(raw or {})
    out = oasst_labels({k: raw[k] for k in OASST_ATTRIBUTES if k in raw})
    # HelpSteer scores are plain numbers; OASST's own `helpfulness` ({value, count}) is not one of NeMo's
    # OASST attributes and is ignored like spam or pii
    out.update(helpsteer_labels({k: raw[k] for k in HELPSTEER_ATTRIBUTES if k in raw and not isinstance(raw[k], Mapping)}))
    if "editor_quality" in raw:
        ja = ja_quality(raw["editor_quality"])
        if ja and "quality" in out:
            raise AttributeMappingError("quality: both an OASST label and an editor's rating")
        out.update(ja)
    return out


def _group(row: dict) -> str:
    try:
        tree = json.loads(row["metadata"] or "{}").get("message_tree_id")
    except (TypeError, ValueError):
        tree = None
    if tree:
        return f"tree:{tree}"
    return "prompt:" + hashlib.blake2b((row["prompt"] or "").encode(), digest_size=8).hexdigest()


def attribute_rows(merged: pa.Table, source: str, *, val_fraction: float = 0.2,
                   seed: int = 0) -> tuple[pa.Table, list[RowIssue]]:
    """(rows, issues) for one source's merged records; every input row is a row or an issue."""
    out, issues = [], []
    for r in merged.to_pylist():
        where = dict(source_file=r.get("source_file"), source_row=r.get("source_row"))
        if not r.get("response"):
            issues.append(RowIssue(reason=Reason.NO_RESPONSE, outcome="removed", field="response",
                                   detail=f"{r['all_prompt_id']}: a prompt with no reply", **where))
            continue
        try:
            labels = source_labels(json.loads(r["labels"]) if r.get("labels") else None)
        except (AttributeMappingError, ValueError) as exc:
            issues.append(RowIssue(reason=Reason.BAD_LABEL, field="labels", detail=f"{r['all_prompt_id']}: {exc}",
                                   raw=raw_preview(r.get("labels")), **where))
            continue
        if not labels:
            issues.append(RowIssue(reason=Reason.NO_ATTRIBUTE_LABELS, outcome="removed", field="labels",
                                   detail=f"{r['all_prompt_id']}: the reply has no attribute label", **where))
            continue
        messages = [m for m in (r.get("messages") or [])]
        out.append({"id": r["all_prompt_id"], "source": source, "group": _group(r), "split": None,
                    "language": r.get("language"), "text": render(messages, r["response"]),
                    "messages": [*messages, {"role": "assistant", "content": r["response"]}],
                    "response": r["response"], "labels": label_vector(labels), "label_string": label_string(labels),
                    "n_labels": len(labels)})
    for row, split in zip(out, split_groups([row["group"] for row in out], val_fraction, seed)):
        row["split"] = split
    return pa.Table.from_pylist(out, schema=SCHEMA), issues


def label_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """Per attribute: rows that have it, in train and in val."""
    counts = {a: {"train": 0, "val": 0} for a in ATTRIBUTES}
    for labels, split in zip(table["labels"].to_pylist(), table["split"].to_pylist()):
        for a, v in zip(ATTRIBUTES, labels):
            if v is not None:
                counts[a][split] += 1
    return counts
