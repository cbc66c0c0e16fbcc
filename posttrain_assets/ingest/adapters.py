"""Format adapters: one raw row -> zero or more unified prompt records. Pure functions.

A record is a dict with the keys of `RECORD_KEYS`. An adapter raises `RowReject` for a row it
cannot map (the row becomes a counted reject with the reason), and returns one `RowReject` in
its output list for a single bad record of a row that yields several (OASST trees).
"""

from __future__ import annotations

import json
from pathlib import PurePath
import re
from typing import Any, Callable, Iterable, Iterator

from partitions.registry import SourceSpec, register_adapter
from resources.reasons import Reason

from ..common.answers import GSM8K_FINAL

RECORD_KEYS = ("source_prompt_id", "prompt", "messages", "response", "chosen", "rejected",
               "reference_answer", "rank", "labels", "preference_score", "metadata",
               "chosen_messages", "rejected_messages", "tie_kind")


class RowReject(Exception):
    """A row (or one record of it) that gives no record: `outcome` 'rejected' (bad input) or
    'removed' (a rule's choice, e.g. a problem whose traces make no preference pair)."""

    def __init__(self, reason: str, field: str | None = None, detail: str = "", outcome: str = "rejected"):
        super().__init__(f"{reason}: {field or ''} {detail}".strip())
        self.reason, self.field, self.detail, self.outcome = reason, field, detail, outcome


def _record(**kw: Any) -> dict:
    rec = {k: None for k in RECORD_KEYS}
    rec.update(kw)
    return rec


def render_conversation(messages: list[dict]) -> str:
    """The prompt text of a conversation: the user text alone for one user turn, else role-tagged turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _get(row: dict, spec: SourceSpec, logical: str, required: bool = True) -> Any:
    col = spec.column(logical)
    if col is None:
        if required:
            raise RowReject(Reason.MISSING_FIELD, logical, "not mapped")
        return None
    value = row.get(col)
    if value is None and required:
        raise RowReject(Reason.MISSING_FIELD, col, "absent or null in this row")
    return value


def _text(row: dict, spec: SourceSpec, logical: str, required: bool = True) -> str | None:
    value = _get(row, spec, logical, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowReject(Reason.NOT_TEXT, spec.column(logical), f"expected a string, got {type(value).__name__}")
    return value


def default_id(source_file: str, source_row: int) -> str:
    """'<file>:<row>': `source_file` is the file's path under the glob's root (or a hub part
    '<config>/<split>') without its extensions, so two configs' equally named files never collide."""
    stem = PurePath(source_file).as_posix()
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        stem = stem[: -len(ext)] if stem.lower().endswith(ext) else stem
    return f"{stem}:{source_row}"


def _row_id(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> str:
    col = spec.column("id")
    if col is None:
        return default_id(source_file, source_row)
    value = row.get(col)
    if value is None or str(value).strip() == "":
        raise RowReject(Reason.MISSING_FIELD, col, "id column is empty")
    return str(value)


def _meta(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------ adapters


def _prompt_turns(row: dict, spec: SourceSpec) -> list[dict]:
    """The user turn(s) of the generic `prompt` field: a string, or a list of strings (MT-Bench
    `turns`) read per the source's `turns` option ('all' = successive user turns, 'first')."""
    col = spec.column("prompt")
    value = _get(row, spec, "prompt")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RowReject(Reason.NOT_TEXT, col,
                        f"expected a string or a list of strings (turns), got {type(value).__name__}")
    if not value:
        raise RowReject(Reason.EMPTY_PROMPT, col, "the list of turns is empty")
    for i, turn in enumerate(value):
        if not isinstance(turn, str):
            raise RowReject(Reason.NOT_TEXT, f"{col}[{i}]", f"turn {i}: expected a string, got {type(turn).__name__}")
        if not turn.strip():
            raise RowReject(Reason.EMPTY_TURN, f"{col}[{i}]", f"turn {i} is empty or whitespace only")
    turns = value[:1] if spec.turns == "first" else value
    return [{"role": "user", "content": t} for t in turns]


def adapt_generic(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    rid = _row_id(row, spec, source_file, source_row)
    chosen = _text(row, spec, "chosen", required=spec.column("chosen") is not None)
    rejected = _text(row, spec, "rejected", required=spec.column("rejected") is not None)
    user_turns = _prompt_turns(row, spec)
    messages = []
    system = _text(row, spec, "system", required=False)
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    messages += user_turns
    return [_record(
        source_prompt_id=rid, prompt=render_conversation(messages), messages=messages,
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
            raise RowReject(Reason.UNPARSEABLE_TRANSCRIPT, spec.column(name), str(exc)) from None
        if turns[-1]["role"] != "assistant":
            raise RowReject(Reason.NO_FINAL_ASSISTANT_TURN, spec.column(name))
        convs[name] = turns
    prompt_msgs = convs["chosen"][:-1]
    if prompt_msgs != convs["rejected"][:-1]:
        raise RowReject(Reason.TRANSCRIPTS_DIVERGE, None,
                        "chosen and rejected differ before their final assistant turn")
    if not prompt_msgs:
        raise RowReject(Reason.EMPTY_PROMPT, spec.column("chosen"), "no turn before the final answer")
    for name in ("chosen", "rejected"):
        if not convs[name][-1]["content"].strip():
            raise RowReject(Reason.EMPTY_RESPONSE, spec.column(name), "final assistant turn is empty")
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
        raise RowReject(Reason.NO_INSTANCES, spec.column("instances"), "expected a non-empty list")
    out = []
    for i, inst in enumerate(instances):
        # a non-text input would otherwise crash at .strip() below
        if (not isinstance(inst, dict) or not isinstance(inst.get("output"), str)
                or not isinstance(inst.get("input"), (str, type(None)))):
            raise RowReject(Reason.BAD_INSTANCE, f"{spec.column('instances')}[{i}]",
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


def _oasst_rank(value: Any) -> int | None:
    """A reply's rank as the int64 column takes it (whole floats such as 1.0 too); else RowReject."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63):
        return value
    raise RowReject(Reason.BAD_RANK, "rank", f"expected a whole number or null, got {value!r}")


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
        raise RowReject(Reason.MISSING_FIELD, col, "no root message object")
    tree_id = row.get("message_tree_id") or root.get("message_tree_id") or root.get("message_id")
    out: list = []

    def visit(msg: dict, path: list[dict], deleted_above: bool) -> None:
        # role as given may be any JSON value (a list is unhashable): only a known string counts
        if not isinstance(msg.get("text"), str) or not isinstance(msg.get("role"), str) or msg["role"] not in OASST_ROLES:
            out.append(RowReject(Reason.BAD_MESSAGE, "text/role",
                                 f"message {msg.get('message_id')} lacks text or a known role"))
            return
        deleted = deleted_above or bool(msg.get("deleted"))
        here = path + [{"role": OASST_ROLES[msg["role"]], "content": msg["text"]}]
        replies = [r for r in (msg.get("replies") or []) if isinstance(r, dict)]
        if msg["role"] == "prompter":
            answers = [r for r in replies if r.get("role") == "assistant"]
            if not answers:
                if deleted:
                    out.append(RowReject(Reason.DELETED_MESSAGE, "deleted", f"message {msg.get('message_id')}"))
                else:
                    out.append(_record(
                        source_prompt_id=str(msg.get("message_id")), prompt=render_conversation(here),
                        messages=here, labels=None,
                        metadata=_meta({"message_tree_id": tree_id, "prompt_message": _oasst_message_meta(msg)})))
            for r in answers:
                if deleted or r.get("deleted"):
                    out.append(RowReject(Reason.DELETED_MESSAGE, "deleted", f"message {r.get('message_id')}"))
                elif not isinstance(r.get("text"), str):
                    out.append(RowReject(Reason.BAD_MESSAGE, "text", f"message {r.get('message_id')} has no text"))
                else:
                    try:  # a rank the int64 column cannot hold is this reply's reject, not a crash
                        rank = _oasst_rank(r.get("rank"))
                    except RowReject as rj:
                        out.append(RowReject(rj.reason, rj.field, f"message {r.get('message_id')}: {rj.detail}"))
                        continue
                    out.append(_record(
                        source_prompt_id=str(r.get("message_id")), prompt=render_conversation(here),
                        messages=here, response=r["text"], rank=rank, labels=r.get("labels"),
                        metadata=_meta({"message_tree_id": tree_id,
                                        "prompt_message": _oasst_message_meta(msg),
                                        "reply_message": _oasst_message_meta(r)})))
        for r in replies:
            visit(r, here, deleted)

    visit(root, [], False)
    return out


#: HelpSteer / HelpSteer2 human score columns (0-4), kept raw in `labels` (mapped by the steerlm stage)
HELPSTEER_SCORES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
#: HelpSteer2's multi-turn prompts put earlier turns inline behind these markers
_HELPSTEER2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def helpsteer_turns(prompt: str) -> list[dict]:
    """A HelpSteer2 prompt -> user / assistant turns (one user turn when it has no markers)."""
    parts = _HELPSTEER2_TURN.split(prompt)
    turns = [{"role": "user", "content": parts[0]}]
    for role, text in zip(parts[1::2], parts[2::2]):
        turns.append({"role": role.lower(), "content": text})
    return [t for t in turns if t["content"].strip()] or turns[:1]


def adapt_helpsteer(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """HelpSteer / HelpSteer2: prompt + response + the five human scores (kept in `labels`, raw)."""
    prompt = _text(row, spec, "prompt")
    response = _text(row, spec, "response")
    labels = {name: row[col] for name in HELPSTEER_SCORES
              if (col := spec.column(name)) is not None and row.get(col) is not None}
    messages = helpsteer_turns(prompt)
    return [_record(source_prompt_id=_row_id(row, spec, source_file, source_row),
                    prompt=render_conversation(messages), messages=messages, response=response,
                    labels=labels or None, metadata=_meta(row))]


def oasst_message_trees(rows: Iterable[tuple[str, int, dict]], spec: SourceSpec
                        ) -> Iterator[tuple[str, int, dict | RowReject]]:
    """Flat OpenAssistant messages (one row per message with its id and parent id, e.g. the oasst2
    message exports or oasst2_ja_edited's id-keyed JSON) -> one nested tree per root message, as
    adapt_oasst_tree reads them (`replies`, `role`, `text` from the mapped text column, `labels`).
    The editor's 1-5 `quality` (field `quality`) is kept as `labels.editor_quality`. A message
    whose parent is not in the file, or that lacks its id, is a RowReject at its own row."""
    cols = {k: spec.column(k) for k in ("id", "parent", "text", "role", "tree", "quality", "labels")}
    nodes: dict[str, dict] = {}
    where: dict[str, tuple[str, int]] = {}
    order: list[str] = []
    for source_file, source_row, row in rows:
        mid = row.get(cols["id"])
        if mid is None or str(mid).strip() == "":
            yield source_file, source_row, RowReject(Reason.MISSING_FIELD, cols["id"], "message id is empty")
            continue
        mid = str(mid)
        if mid in nodes:
            yield source_file, source_row, RowReject(Reason.DUPLICATE_ID, cols["id"], f"message {mid} seen before")
            continue
        labels = row.get(cols["labels"]) if cols["labels"] else None
        labels = dict(labels) if isinstance(labels, dict) else {}
        if cols["quality"] and row.get(cols["quality"]) is not None:
            labels["editor_quality"] = row[cols["quality"]]
        nodes[mid] = {"message_id": mid, "parent_id": row.get(cols["parent"]), "role": row.get(cols["role"]),
                      "text": row.get(cols["text"]), "message_tree_id": row.get(cols["tree"]) if cols["tree"] else None,
                      "labels": labels or None, "replies": []}
        where[mid] = (source_file, source_row)
        order.append(mid)
    roots = []
    for mid in order:
        parent = nodes[mid]["parent_id"]
        if parent is None:
            roots.append(mid)
        elif str(parent) in nodes:
            nodes[str(parent)]["replies"].append(nodes[mid])
        else:
            f, r = where[mid]
            yield f, r, RowReject(Reason.ORPHAN_MESSAGE, cols["parent"], f"message {mid}: parent {parent} is not in the source")
    for mid in roots:
        f, r = where[mid]
        yield f, r, nodes[mid]


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
            if not all(isinstance(m["content"], str) for m in messages):  # e.g. a number: no text to render
                raise TypeError("content")
        except (KeyError, TypeError):
            raise RowReject(Reason.BAD_CONTEXT, spec.column("context"),
                            "messages need role user/assistant/system and string content") from None
    else:
        raise RowReject(Reason.BAD_CONTEXT, spec.column("context"), "expected text or a list of messages")
    r1, r2 = _text(row, spec, "response1"), _text(row, spec, "response2")
    score = _get(row, spec, "overall_preference")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score not in range(-3, 4):
        raise RowReject(Reason.BAD_PREFERENCE_SCORE, spec.column("overall_preference"),
                        f"expected an integer -3..3, got {score!r}")
    chosen, rejected, tie = helpsteer3_choice(int(score), r1, r2)
    # the message lists: each side's whole conversation; a tie keeps response1 / response2 in that order
    first, second = (r1, r2) if tie else (chosen, rejected)
    return [_record(
        source_prompt_id=_row_id(row, spec, source_file, source_row),
        prompt=render_conversation(messages), messages=messages, chosen=chosen, rejected=rejected,
        chosen_messages=messages + [{"role": "assistant", "content": first}],
        rejected_messages=messages + [{"role": "assistant", "content": second}],
        tie_kind="tie" if tie else None, preference_score=float(score), metadata=_meta(row))]


def _split_final_reply(messages: list[dict], spec: SourceSpec, col: str) -> tuple[list[dict], str | None]:
    """(prompt messages, final assistant reply) of a conversation.

    A conversation that does not end with an assistant turn is a prompt without a reply for a
    source of kind 'prompt' and a `no_final_assistant_turn` reject otherwise.
    """
    if messages[-1]["role"] == "assistant":
        prompt_msgs, reply = messages[:-1], messages[-1]["content"]
    elif spec.kind == "prompt":
        prompt_msgs, reply = messages, None
    else:
        raise RowReject(Reason.NO_FINAL_ASSISTANT_TURN, col,
                        f"the last turn is {messages[-1]['role']!r}; kind {spec.kind!r} needs an "
                        "assistant reply to end the conversation")
    if not any(m["role"] == "user" for m in prompt_msgs):
        raise RowReject(Reason.NO_USER_TURN, col, "no user turn before the final assistant turn")
    return prompt_msgs, reply


def adapt_alpaca(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """instruction (+ input after a blank line, as self_instruct) -> prompt; output -> response.

    The input is part of the prompt text, so rows sharing an instruction but not the input are
    different records for dedup. Optional `system` and `history` ([[user, assistant], ...]).
    """
    rid = _row_id(row, spec, source_file, source_row)
    instruction = _text(row, spec, "prompt")
    inp = _text(row, spec, "input", required=False) or ""
    output = _text(row, spec, "response", required=spec.column("response") is not None)
    if not instruction.strip():
        raise RowReject(Reason.EMPTY_PROMPT, spec.column("prompt"), "instruction is empty or whitespace only")
    if output is not None and not output.strip():
        raise RowReject(Reason.EMPTY_RESPONSE, spec.column("response"), "output is empty or whitespace only")
    prompt = instruction.strip() + ("\n\n" + inp.strip() if inp.strip() else "")
    messages = []
    system = _text(row, spec, "system", required=False)
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    history = _get(row, spec, "history", required=False)
    hcol = spec.column("history")
    if history is not None:
        if not isinstance(history, list):
            raise RowReject(Reason.BAD_HISTORY, hcol,
                            f"expected a list of [user, assistant] pairs, got {type(history).__name__}")
        for i, pair in enumerate(history):
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(t, str) and t.strip() for t in pair)):
                raise RowReject(Reason.BAD_HISTORY, f"{hcol}[{i}]",
                                "expected a [user, assistant] pair of non-empty strings")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": prompt})
    return [_record(
        source_prompt_id=rid, prompt=render_conversation(messages), messages=messages,
        response=output, metadata=_meta(row))]


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool",
                  "function_call": "assistant", "observation": "tool"}


def _parse_tools(row: dict, spec: SourceSpec) -> list | None:
    """The `tools` column: a list of tool schemas, or JSON text of one ('' = none)."""
    value = _get(row, spec, "tools", required=False)
    col = spec.column("tools")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowReject(Reason.BAD_TOOLS, col, f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowReject(Reason.BAD_TOOLS, col, f"expected a list of tool schemas (objects), got {type(value).__name__}")
    return value


def adapt_sharegpt(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """ShareGPT `conversations` [{from, value}] -> messages; the final assistant turn -> response.

    human -> user, gpt -> assistant, system -> system, function_call -> assistant (the call text
    kept as content), observation / tool -> tool. A mapped `system` column becomes the first
    message; `tools` is checked (list or JSON text) and kept, with the whole row, in metadata.
    """
    rid = _row_id(row, spec, source_file, source_row)
    col = spec.column("conversations")
    conv = _get(row, spec, "conversations")
    if not isinstance(conv, list):
        raise RowReject(Reason.BAD_CONVERSATIONS, col,
                        f"expected a list of {{from, value}} turns, got {type(conv).__name__}")
    if not conv:
        raise RowReject(Reason.EMPTY_CONVERSATION, col, "no turns")
    messages = []
    system = _text(row, spec, "system", required=False)
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(conv):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)
                and isinstance(turn.get("value"), str)):
            raise RowReject(Reason.BAD_TURN, f"{col}[{i}]", "expected an object with string 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RowReject(Reason.UNKNOWN_ROLE, f"{col}[{i}].from",
                            f"{turn['from']!r}; known: {', '.join(SHAREGPT_ROLES)}")
        if not turn["value"].strip():
            raise RowReject(Reason.EMPTY_CONTENT, f"{col}[{i}].value",
                            f"{turn['from']} turn is empty or whitespace only")
        messages.append({"role": role, "content": turn["value"]})
    _parse_tools(row, spec)  # checked only: metadata keeps the row, `tools` as given
    prompt_msgs, reply = _split_final_reply(messages, spec, col)
    return [_record(
        source_prompt_id=rid, prompt=render_conversation(prompt_msgs), messages=prompt_msgs,
        response=reply, metadata=_meta(row))]


OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool"}


def _openai_content(m: dict, where: str) -> str:
    """Text of an OpenAI message: a string, a list of text parts, or an assistant's tool calls."""
    content = m.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise RowReject(Reason.UNSUPPORTED_CONTENT, f"{where}.content", "only text parts are supported")
        content = "\n".join(p["text"] for p in content)
    elif content is None and m.get("role") == "assistant" and m.get("tool_calls"):
        content = json.dumps(m["tool_calls"], ensure_ascii=False)
    if not isinstance(content, str):
        raise RowReject(Reason.BAD_TURN, f"{where}.content", f"expected a string, got {type(content).__name__}")
    if not content.strip():
        raise RowReject(Reason.EMPTY_CONTENT, f"{where}.content", f"{m.get('role')} turn is empty or whitespace only")
    return content


def adapt_messages(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """OpenAI chat `messages` [{role, content}] -> prompt messages + the final assistant reply.

    An optional boolean `label` (KTO: is the final reply desirable) is kept as `labels` {"label": bool}.
    """
    rid = _row_id(row, spec, source_file, source_row)
    col = spec.column("messages")
    raw_msgs = _get(row, spec, "messages")
    if not isinstance(raw_msgs, list):
        raise RowReject(Reason.BAD_MESSAGES, col,
                        f"expected a list of {{role, content}} messages, got {type(raw_msgs).__name__}")
    if not raw_msgs:
        raise RowReject(Reason.EMPTY_CONVERSATION, col, "no messages")
    messages = []
    for i, m in enumerate(raw_msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RowReject(Reason.BAD_TURN, f"{col}[{i}]", "expected an object with a string 'role'")
        role = OPENAI_ROLES.get(m["role"])
        if role is None:
            raise RowReject(Reason.UNKNOWN_ROLE, f"{col}[{i}].role", f"{m['role']!r}; known: {', '.join(OPENAI_ROLES)}")
        messages.append({"role": role, "content": _openai_content(m, f"{col}[{i}]")})
    labels = None
    if spec.column("label") is not None:
        label = _get(row, spec, "label")
        if not isinstance(label, bool):
            raise RowReject(Reason.BAD_LABEL, spec.column("label"), f"expected true or false, got {label!r}")
        labels = {"label": label}
    prompt_msgs, reply = _split_final_reply(messages, spec, col)
    return [_record(
        source_prompt_id=rid, prompt=render_conversation(prompt_msgs), messages=prompt_msgs,
        response=reply, labels=labels, metadata=_meta(row))]


from .comparisons import (CHECK_OPTIONS, OPTIONS, adapt_multi_trace,  # noqa: E402 - they use the helpers above
                          adapt_pairwise)

ADAPTERS: dict[str, Callable[[dict, SourceSpec, str, int], list]] = {
    "generic": adapt_generic,
    "gsm8k": adapt_gsm8k,
    "hh_rlhf": adapt_hh_rlhf,
    "self_instruct": adapt_self_instruct,
    "oasst_tree": adapt_oasst_tree,
    "helpsteer3": adapt_helpsteer3,
    "alpaca": adapt_alpaca,
    "sharegpt": adapt_sharegpt,
    "messages": adapt_messages,
    "helpsteer": adapt_helpsteer,
    "oasst_messages": adapt_oasst_tree,  # over the trees GROUPERS builds (root column ".")
    "pairwise": adapt_pairwise,
    "multi_trace": adapt_multi_trace,
}
#: adapters whose rows are first grouped across the file (message -> tree) before adapting
GROUPERS = {"oasst_messages": oasst_message_trees}


# --------------------------------------------------------------------------- declarations
# What the sources registry validates for each adapter (partitions/registry.py register_adapter):
# the one table of an adapter's fields, required fields, kinds and options.

#: Logical fields each adapter understands, with the raw column it reads by default.
#: `None` means the field is optional and unmapped unless the registry maps it.
FIELDS: dict[str, dict[str, str | None]] = {
    # one row = one record; map any of these logical fields to columns
    "generic": {"prompt": None, "response": None, "chosen": None, "rejected": None,
                "system": None, "reference_answer": None, "id": None},
    # question -> prompt, answer -> response, final answer after '####' -> reference_answer
    "gsm8k": {"prompt": "question", "response": "answer", "id": None},
    # chosen / rejected transcripts with '\n\nHuman:' / '\n\nAssistant:' turns
    "hh_rlhf": {"chosen": "chosen", "rejected": "rejected", "id": None},
    # instruction + instances[{input, output}]; one record per instance
    "self_instruct": {"prompt": "instruction", "instances": "instances", "id": "id"},
    # OpenAssistant message tree: `root` is the column holding the root message
    # ('.' when each row is itself a root message, as in *_message.jsonl exports)
    "oasst_tree": {"root": "prompt", "id": None},
    # HelpSteer3 preference rows: context (messages or text), two responses, overall_preference -3..3
    "helpsteer3": {"context": "context", "response1": "response1", "response2": "response2",
                   "overall_preference": "overall_preference", "id": None},
    # Alpaca rows: instruction (+ input, after a blank line) -> prompt; output -> response;
    # optional system prompt and history ([[user, assistant], ...] turns before the instruction)
    "alpaca": {"prompt": "instruction", "input": "input", "response": "output", "system": None,
               "history": None, "id": None},
    # ShareGPT rows: conversations [{from, value}] (human/gpt/system/tool/function_call/observation);
    # prompt = the turns before the final assistant turn, response = that turn; map `system`
    # (a system prompt column) and `tools` (a list or JSON text of tool schemas) when the file has them
    "sharegpt": {"conversations": "conversations", "system": None, "tools": None, "id": None},
    # OpenAI chat rows: messages [{role, content}] (system/developer/user/assistant/tool); prompt =
    # the turns before the final assistant turn, response = that turn; `label` = an optional boolean
    # judgement of the final turn (KTO desirable / undesirable), kept in `labels`
    "messages": {"messages": "messages", "label": None, "id": None},
    # HelpSteer / HelpSteer2: prompt, response and the five human 0-4 scores (kept in `labels`)
    "helpsteer": {"prompt": "prompt", "response": "response", "helpfulness": "helpfulness",
                  "correctness": "correctness", "coherence": "coherence", "complexity": "complexity",
                  "verbosity": "verbosity", "id": None},
    # flat OpenAssistant messages (one row per message: id, parent id, role, text), rebuilt into
    # trees across the file, then read as `oasst_tree`; `quality` = an editor's 1-5 rating
    # (oasst2_ja_edited), `labels` = OASST's per-message labels where the export has them
    "oasst_messages": {"id": "message_id", "parent": "parent_id", "role": "role", "text": "text",
                       "tree": "message_tree_id", "quality": None, "labels": None, "root": "."},
    # battle logs (Chatbot Arena, WebDev Arena): two conversations of the same user turns + a verdict;
    # content as a string or a list of typed parts [{type: "text", text}]; an assistant turn's extra
    # payload (`object`: {code, file_path, ...}) is kept (options: verdicts, payload, payload_in_content)
    "pairwise": {"conversation_a": "conversation_a", "conversation_b": "conversation_b", "winner": "winner",
                 "id": None},
    # n generations per problem + per-generation verdicts (OpenR1-Math): CoT rows from the `messages`
    # answer or the correct complete traces, and preference pairs under a rule (options: pair_rule, cot_rows)
    "multi_trace": {"prompt": "problem", "traces": "generations", "verdicts": "correctness_math_verify",
                    "fallback_verdicts": "correctness_llama", "complete": "is_reasoning_complete",
                    "finish_reasons": "finish_reasons", "messages": "messages", "reference_answer": "answer",
                    "id": None},
}

#: Logical fields that must end up mapped for an adapter to produce anything (one group of them).
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "generic": (("prompt",),),
    "gsm8k": (("prompt", "response"),),
    "hh_rlhf": (("chosen", "rejected"),),
    "self_instruct": (("prompt", "instances"),),
    "oasst_tree": (("root",),),
    "helpsteer3": (("context", "response1", "response2", "overall_preference"),),
    "alpaca": (("prompt", "response"),),
    "sharegpt": (("conversations",),),
    "messages": (("messages",),),
    "helpsteer": (("prompt", "response"),),
    "oasst_messages": (("id", "parent", "role", "text"),),
    "pairwise": (("conversation_a", "conversation_b", "winner"),),
    "multi_trace": (("prompt", "traces", "verdicts"),),
}
#: the kind an adapter's rows need, where it is not free (pairwise: pairs; multi_trace: CoT rows + pairs)
KINDS = {"pairwise": ("preference",), "multi_trace": ("cot",)}
#: adapters whose records carry human attribute labels (the only ones a kind `attributes` source may use)
LABELLED = ("oasst_tree", "oasst_messages", "helpsteer")
#: adapters that join rows across the whole file (flat messages -> trees): a shard would cut trees apart
CROSS_ROW = tuple(GROUPERS)
#: adapters whose rows are preference pairs by themselves (kind `preference` without chosen / rejected)
PAIRS = ("helpsteer3", "pairwise")

for _name in ADAPTERS:
    register_adapter(_name, fields=FIELDS[_name], required=REQUIRED[_name], kinds=KINDS.get(_name),
                     options=OPTIONS.get(_name), check_options=CHECK_OPTIONS.get(_name), labelled=_name in LABELLED,
                     cross_row=_name in CROSS_ROW, pairs=_name in PAIRS)
