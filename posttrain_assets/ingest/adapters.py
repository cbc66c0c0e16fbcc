"""Format adapters: one raw row -> zero or more unified prompt records. Pure functions.

A record is a dict with the keys of `RECORD_KEYS`. An adapter raises `RowReject` for a row it
cannot map (the row becomes a counted reject with the reason), and returns one `RowReject` in
its output list for a single bad record of a row that yields several (OASST trees).
"""

from __future__ import annotations

import json
from pathlib import PurePath
import re
from typing import Any, Callable

from partitions.registry import SourceSpec

from ..common.answers import GSM8K_FINAL

RECORD_KEYS = ("source_prompt_id", "prompt", "messages", "response", "chosen", "rejected",
               "reference_answer", "rank", "labels", "preference_score", "metadata")


class RowReject(Exception):
    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        super().__init__(f"{reason}: {field or ''} {detail}".strip())
        self.reason, self.field, self.detail = reason, field, detail


def _record(**kw: Any) -> dict:
    rec = {k: None for k in RECORD_KEYS}
    rec.update(kw)
    return rec


def render_conversation(messages: list[dict]) -> str:
    """The prompt text of a conversation: the user text alone for one user turn, else role-tagged turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _get(row: dict, spec: SourceSpec, logical: str, required: bool = True) -> Any:
    col = spec.column(logical)
    if col is None:
        if required:
            raise RowReject("missing_field", logical, "not mapped")
        return None
    value = row.get(col)
    if value is None and required:
        raise RowReject("missing_field", col, "absent or null in this row")
    return value


def _text(row: dict, spec: SourceSpec, logical: str, required: bool = True) -> str | None:
    value = _get(row, spec, logical, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowReject("not_text", spec.column(logical), f"expected a string, got {type(value).__name__}")
    return value


def default_id(source_file: str, source_row: int) -> str:
    stem = PurePath(source_file).name
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        stem = stem[: -len(ext)] if stem.lower().endswith(ext) else stem
    return f"{stem}:{source_row}"


def _row_id(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> str:
    col = spec.column("id")
    if col is None:
        return default_id(source_file, source_row)
    value = row.get(col)
    if value is None or str(value).strip() == "":
        raise RowReject("missing_field", col, "id column is empty")
    return str(value)


def _meta(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------ adapters


def adapt_generic(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    rid = _row_id(row, spec, source_file, source_row)
    chosen = _text(row, spec, "chosen", required=spec.column("chosen") is not None)
    rejected = _text(row, spec, "rejected", required=spec.column("rejected") is not None)
    prompt = _text(row, spec, "prompt")
    messages = []
    system = _text(row, spec, "system", required=False)
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return [_record(
        source_prompt_id=rid, prompt=prompt if not system else render_conversation(messages),
        messages=messages,
        response=_text(row, spec, "response", required=False), chosen=chosen, rejected=rejected,
        reference_answer=_text(row, spec, "reference_answer", required=False), metadata=_meta(row))]




def split_gsm8k_answer(answer: str) -> tuple[str, str | None]:
    """('worked solution', 'final answer') split at the last '####'; final is None when absent."""
    if GSM8K_FINAL not in answer:
        return answer, None
    body, final = answer.rsplit(GSM8K_FINAL, 1)
    return body.rstrip(), final.strip().replace(",", "")


def adapt_gsm8k(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    question = _text(row, spec, "prompt")
    answer = _text(row, spec, "response")
    _, final = split_gsm8k_answer(answer)
    return [_record(
        source_prompt_id=_row_id(row, spec, source_file, source_row), prompt=question,
        messages=[{"role": "user", "content": question}], response=answer,
        reference_answer=final, metadata=_meta(row))]


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> [{'role': 'user', 'content': ...}, ...]."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first '\\n\\nHuman:' marker")
    turns = [{"role": HH_ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    if not turns:
        raise ValueError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return turns


def adapt_hh_rlhf(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    chosen_t = _text(row, spec, "chosen")
    rejected_t = _text(row, spec, "rejected")
    convs = {}
    for name, text in (("chosen", chosen_t), ("rejected", rejected_t)):
        try:
            turns = parse_hh_transcript(text)
        except ValueError as exc:
            raise RowReject("unparseable_transcript", spec.column(name), str(exc)) from None
        if turns[-1]["role"] != "assistant":
            raise RowReject("no_final_assistant_turn", spec.column(name))
        convs[name] = turns
    prompt_msgs = convs["chosen"][:-1]
    if prompt_msgs != convs["rejected"][:-1]:
        raise RowReject("transcripts_diverge", None,
                        "chosen and rejected differ before their final assistant turn")
    if not prompt_msgs:
        raise RowReject("empty_prompt", spec.column("chosen"), "no turn before the final answer")
    for name in ("chosen", "rejected"):
        if not convs[name][-1]["content"].strip():
            raise RowReject("empty_response", spec.column(name), "final assistant turn is empty")
    return [_record(
        source_prompt_id=_row_id(row, spec, source_file, source_row),
        prompt=render_conversation(prompt_msgs), messages=prompt_msgs,
        chosen=convs["chosen"][-1]["content"], rejected=convs["rejected"][-1]["content"],
        metadata=_meta(row))]


def adapt_self_instruct(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    rid = _row_id(row, spec, source_file, source_row)
    instruction = _text(row, spec, "prompt")
    instances = _get(row, spec, "instances")
    if not isinstance(instances, list) or not instances:
        raise RowReject("no_instances", spec.column("instances"), "expected a non-empty list")
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or not isinstance(inst.get("output"), str):
            raise RowReject("bad_instance", f"{spec.column('instances')}[{i}]",
                            "expected {input, output} strings")
        inp = inst.get("input") or ""
        prompt = instruction.strip() + ("\n\n" + inp.strip() if inp.strip() else "")
        out.append(_record(
            source_prompt_id=f"{rid}#{i}", prompt=prompt,
            messages=[{"role": "user", "content": prompt}], response=inst["output"],
            metadata=_meta({**{k: v for k, v in row.items() if k != "instances"},
                            "instance_index": i, "instance": inst})))
    return out


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst_message_meta(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "replies"}


def adapt_oasst_tree(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """Every prompter message -> one record per assistant reply (or one with no response).

    The prompt is the conversation from the root to that prompter message; rank and the reply's
    human `labels` are kept. Deleted messages give a counted reject, not a record.
    """
    col = spec.column("root")
    root = row if col == "." else row.get(col)
    if not isinstance(root, dict):
        raise RowReject("missing_field", col, "no root message object")
    tree_id = row.get("message_tree_id") or root.get("message_tree_id") or root.get("message_id")
    out: list = []

    def visit(msg: dict, path: list[dict], deleted_above: bool) -> None:
        if not isinstance(msg.get("text"), str) or msg.get("role") not in OASST_ROLES:
            out.append(RowReject("bad_message", "text/role",
                                 f"message {msg.get('message_id')} lacks text or a known role"))
            return
        deleted = deleted_above or bool(msg.get("deleted"))
        here = path + [{"role": OASST_ROLES[msg["role"]], "content": msg["text"]}]
        replies = [r for r in (msg.get("replies") or []) if isinstance(r, dict)]
        if msg["role"] == "prompter":
            answers = [r for r in replies if r.get("role") == "assistant"]
            if not answers:
                if deleted:
                    out.append(RowReject("deleted_message", "deleted", f"message {msg.get('message_id')}"))
                else:
                    out.append(_record(
                        source_prompt_id=str(msg.get("message_id")), prompt=render_conversation(here),
                        messages=here, labels=None,
                        metadata=_meta({"message_tree_id": tree_id, "prompt_message": _oasst_message_meta(msg)})))
            for r in answers:
                if deleted or r.get("deleted"):
                    out.append(RowReject("deleted_message", "deleted", f"message {r.get('message_id')}"))
                elif not isinstance(r.get("text"), str):
                    out.append(RowReject("bad_message", "text", f"message {r.get('message_id')} has no text"))
                else:
                    out.append(_record(
                        source_prompt_id=str(r.get("message_id")), prompt=render_conversation(here),
                        messages=here, response=r["text"], rank=r.get("rank"), labels=r.get("labels"),
                        metadata=_meta({"message_tree_id": tree_id,
                                        "prompt_message": _oasst_message_meta(msg),
                                        "reply_message": _oasst_message_meta(r)})))
        for r in replies:
            visit(r, here, deleted)

    visit(root, [], False)
    return out


HELPSTEER_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def helpsteer3_choice(score: int, response1: str, response2: str) -> tuple[str, str, bool]:
    """The seed's HelpSteer3 rule: overall_preference -3..-1 -> response1 preferred, 1..3 ->
    response2 preferred, 0 -> tie (chosen = rejected = "", flagged). Returns (chosen, rejected, tie)."""
    if score < 0:
        return response1, response2, False
    if score > 0:
        return response2, response1, False
    return "", "", True


def adapt_helpsteer3(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    context = _get(row, spec, "context")
    if isinstance(context, str):
        messages = [{"role": "user", "content": context}]
    elif isinstance(context, list) and context and all(isinstance(m, dict) for m in context):
        try:
            messages = [{"role": HELPSTEER_ROLES[m["role"]], "content": m["content"]} for m in context]
        except (KeyError, TypeError):
            raise RowReject("bad_context", spec.column("context"),
                            "messages need role user/assistant/system and string content") from None
    else:
        raise RowReject("bad_context", spec.column("context"), "expected text or a list of messages")
    r1, r2 = _text(row, spec, "response1"), _text(row, spec, "response2")
    score = _get(row, spec, "overall_preference")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score not in range(-3, 4):
        raise RowReject("bad_preference_score", spec.column("overall_preference"),
                        f"expected an integer -3..3, got {score!r}")
    chosen, rejected, _ = helpsteer3_choice(int(score), r1, r2)
    return [_record(
        source_prompt_id=_row_id(row, spec, source_file, source_row),
        prompt=render_conversation(messages), messages=messages, chosen=chosen, rejected=rejected,
        preference_score=float(score), metadata=_meta(row))]


ADAPTERS: dict[str, Callable[[dict, SourceSpec, str, int], list]] = {
    "generic": adapt_generic,
    "gsm8k": adapt_gsm8k,
    "hh_rlhf": adapt_hh_rlhf,
    "self_instruct": adapt_self_instruct,
    "oasst_tree": adapt_oasst_tree,
    "helpsteer3": adapt_helpsteer3,
}
