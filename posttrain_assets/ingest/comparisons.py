"""Adapters for rows that compare answers: battle logs (two conversations + a verdict) and multi-trace
problems (n generations + per-generation verdicts). Pure functions, as the other adapters.

`pairwise` (lmarena-ai/arena-human-preference-100k, webdev-arena-preference-10k, any battle log):
- the prompt = the user (and system) turns, which both conversations must share (else the row is a
  `conversations_diverge` reject naming the turn);
- `chosen` / `rejected` = the winner's / the loser's final assistant turn (today's strings),
  `chosen_messages` / `rejected_messages` = each side's whole conversation, every turn;
- a tie or both-bad verdict is a row with `tie_kind` 'tie' / 'both_bad', chosen = rejected = "" (the
  seed's rule) and the two conversations in the message lists in source order (a, b): nothing of the
  battle is lost, and both-bad sides are two undesirable answers for KTO;
- a verdict the registry does not declare (options.verdicts) is an `unknown_verdict` reject;
- content is a string or a list of typed parts ([{type: "text", text}]); an assistant turn's extra
  payload (options.payload, default `object`: WebDev Arena's {code, file_path, ...}) is appended to
  the turn's text as a fenced code block (options.payload_in_content) and always kept in metadata.

`multi_trace` (open-r1/OpenR1-Math-220k and any "n generations + verdicts" dataset): see
`adapt_multi_trace`."""

from __future__ import annotations

import json
from typing import Any

from partitions.registry import EntryError, SourceSpec
from resources.reasons import Reason

from .adapters import RowReject, _get, _meta, _record, _row_id, _text, render_conversation

#: pairwise verdicts: what a `winner` value means (a / b preferred, a tie, both bad)
VERDICT_MEANINGS = ("a", "b", "tie", "both_bad")
#: multi_trace pair rules (posttrain_assets/ingest/comparisons.py trace_pairs)
PAIR_RULES = ("best_vs_worst", "all_pairs", "seed")
#: multi_trace CoT rows: the `messages` answer (one per problem), or every correct and complete trace
COT_ROWS = ("messages", "correct")
#: per-adapter `options`: name -> default (the registry fills them in; CHECK_OPTIONS checks them)
OPTIONS: dict[str, dict[str, Any]] = {
    "pairwise": {"verdicts": {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad"},
                 "payload": "object", "payload_in_content": True},
    "multi_trace": {"pair_rule": "best_vs_worst", "cot_rows": "messages"},
}


def check_pairwise_options(out: dict[str, Any]) -> None:
    """pairwise `options` (defaults filled in): verdicts, payload, payload_in_content."""
    v = out["verdicts"]
    if (not isinstance(v, dict) or not v or not all(isinstance(k, str) for k in v)
            or not all(m in VERDICT_MEANINGS for m in v.values())):
        raise EntryError("options.verdicts", f"must map each winner value to one of "
                                             f"{', '.join(VERDICT_MEANINGS)}, got {v!r}")
    if not {"a", "b"} <= set(v.values()):
        raise EntryError("options.verdicts", "needs a value meaning a and one meaning b")
    if out["payload"] is not None and (not isinstance(out["payload"], str) or not out["payload"]):
        raise EntryError("options.payload", f"must be the key of an assistant turn's extra "
                                            f"object (or null), got {out['payload']!r}")
    if not isinstance(out["payload_in_content"], bool):
        raise EntryError("options.payload_in_content", f"must be true or false, got "
                                                       f"{out['payload_in_content']!r}")


def check_multi_trace_options(out: dict[str, Any]) -> None:
    """multi_trace `options` (defaults filled in): pair_rule, cot_rows."""
    for name, choices in (("pair_rule", PAIR_RULES), ("cot_rows", COT_ROWS)):
        if out[name] not in choices:
            raise EntryError(f"options.{name}", f"must be one of {', '.join(choices)}, got {out[name]!r}")


CHECK_OPTIONS = {"pairwise": check_pairwise_options, "multi_trace": check_multi_trace_options}

PROMPT_ROLES = ("system", "user")
TURN_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _part_text(content: Any, where: str) -> str:
    """A turn's text: a string, or the text parts of a list of typed parts (other part types: a reject)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowReject(Reason.UNSUPPORTED_CONTENT, f"{where}.content[{k}]",
                                f"a part of type {kind!r}; only text parts are read")
        return "\n".join(texts)
    raise RowReject(Reason.BAD_TURN, f"{where}.content",
                    f"expected a string or a list of text parts, got {type(content).__name__}")


def payload_block(payload: Any) -> str:
    """An assistant turn's payload as text: its `code` in a fenced block under its `file_path`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str) or not payload["code"].strip():
        return ""
    head = f"`{payload['file_path']}`\n" if isinstance(payload.get("file_path"), str) and payload["file_path"] else ""
    return f"{head}```\n{payload['code'].rstrip()}\n```"


def read_conversation(value: Any, col: str, spec: SourceSpec) -> list[dict]:
    """One side of a battle -> [{role, content}] (payloads appended per the options)."""
    if not isinstance(value, list):
        raise RowReject(Reason.BAD_CONVERSATION, col, f"expected a list of {{role, content}} turns, got {type(value).__name__}")
    if not value:
        raise RowReject(Reason.EMPTY_CONVERSATION, col, "no turns")
    payload_key, in_content = spec.option("payload"), spec.option("payload_in_content")
    out = []
    for i, turn in enumerate(value):
        where = f"{col}[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            raise RowReject(Reason.BAD_TURN, where, "expected an object with a string 'role'")
        role = TURN_ROLES.get(turn["role"])
        if role is None:
            raise RowReject(Reason.UNKNOWN_ROLE, f"{where}.role", f"{turn['role']!r}; known: {', '.join(TURN_ROLES)}")
        text = _part_text(turn.get("content"), where)
        if role == "assistant" and payload_key and in_content:
            block = payload_block(turn.get(payload_key))
            text = f"{text.rstrip()}\n\n{block}" if text.strip() and block else (text if not block else block)
        if not text.strip():
            raise RowReject(Reason.EMPTY_CONTENT, f"{where}.content", f"{turn['role']} turn is empty or whitespace only")
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "assistant":
        raise RowReject(Reason.NO_FINAL_ASSISTANT_TURN, col, f"the last turn is {out[-1]['role']!r}")
    if not any(m["role"] == "user" for m in out):
        raise RowReject(Reason.NO_USER_TURN, col, "no user turn")
    return out


def adapt_pairwise(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    rid = _row_id(row, spec, source_file, source_row)
    wcol = spec.column("winner")
    verdicts: dict = spec.option("verdicts")
    winner = _get(row, spec, "winner")
    if not isinstance(winner, str) or winner not in verdicts:
        raise RowReject(Reason.UNKNOWN_VERDICT, wcol, f"{winner!r} is not a declared verdict "
                                                 f"(options.verdicts: {', '.join(map(repr, verdicts))})")
    meaning = verdicts[winner]
    cols = {s: spec.column(f"conversation_{s}") for s in "ab"}
    conv = {s: read_conversation(_get(row, spec, f"conversation_{s}"), cols[s], spec) for s in "ab"}
    prompt = {s: [(i, m) for i, m in enumerate(conv[s]) if m["role"] in PROMPT_ROLES] for s in "ab"}
    if len(prompt["a"]) != len(prompt["b"]):
        raise RowReject(Reason.CONVERSATIONS_DIVERGE, cols["b"], f"{len(prompt['b'])} user turns, conversation_a has "
                                                            f"{len(prompt['a'])}")
    for k, ((_, ma), (ib, mb)) in enumerate(zip(prompt["a"], prompt["b"])):
        if ma != mb:
            raise RowReject(Reason.CONVERSATIONS_DIVERGE, f"{cols['b']}[{ib}]",
                            f"user turn {k + 1} differs from conversation_a's")
    messages = [m for _, m in prompt["a"]]
    if meaning in ("tie", "both_bad"):
        chosen = rejected = ""
        first, second = conv["a"], conv["b"]
    else:
        first, second = (conv["a"], conv["b"]) if meaning == "a" else (conv["b"], conv["a"])
        chosen, rejected = first[-1]["content"], second[-1]["content"]
    return [_record(
        source_prompt_id=rid, prompt=render_conversation(messages), messages=messages, chosen=chosen,
        rejected=rejected, chosen_messages=first, rejected_messages=second,
        tie_kind=meaning if meaning in ("tie", "both_bad") else None, metadata=_meta(row))]


# ------------------------------------------------------------------------------ multi_trace


def _flags(row: dict, spec: SourceSpec, logical: str, n: int, allow: tuple = (bool,)) -> list | None:
    """A per-trace list column (verdicts, completeness, finish reasons): None when unmapped or null;
    each item one of `allow` or null; a length other than the trace count is a reject naming the field."""
    col = spec.column(logical)
    if col is None:
        return None
    value = row.get(col)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RowReject(Reason.BAD_VERDICTS, col, f"expected a list (one value per trace), got {type(value).__name__}")
    if len(value) != n:
        raise RowReject(Reason.VERDICTS_LENGTH_MISMATCH, col, f"{len(value)} values for {n} traces")
    for i, v in enumerate(value):
        if v is not None and not isinstance(v, allow):
            raise RowReject(Reason.BAD_VERDICTS, f"{col}[{i}]", f"expected {' or '.join(t.__name__ for t in allow)} "
                                                           f"or null, got {v!r}")
    return value


def trace_verdicts(row: dict, spec: SourceSpec, n: int) -> tuple[list, list, list]:
    """(verdict, where it came from, complete) per trace: Math-Verify's verdict (`verdicts`), the LLM's
    (`fallback_verdicts`) where Math-Verify's is null, None where neither decided; a trace is complete
    unless `complete` says False or its finish reason is 'length' (cut at the token limit)."""
    mv = _flags(row, spec, "verdicts", n)
    if mv is None:
        raise RowReject(Reason.MISSING_FIELD, spec.column("verdicts"), "absent or null in this row")
    llm = _flags(row, spec, "fallback_verdicts", n) or [None] * n
    done = _flags(row, spec, "complete", n) or [None] * n
    finish = _flags(row, spec, "finish_reasons", n, allow=(str,)) or [None] * n
    verdict, by = [], []
    for a, b in zip(mv, llm):
        verdict.append(a if a is not None else b)
        by.append("verdicts" if a is not None else "fallback_verdicts" if b is not None else None)
    complete = [d is not False and f != "length" for d, f in zip(done, finish)]
    return verdict, by, complete


def _missing(side: bool, verdict: list, complete: list) -> str:
    """Why no complete trace with verdict `side` exists: one exists but is incomplete, or none at all."""
    if any(v is side and not c for v, c in zip(verdict, complete)):
        return Reason.INCOMPLETE
    return Reason.NO_CORRECT_TRACE if side else Reason.NO_INCORRECT_TRACE


def trace_pairs(verdict: list, by: list, complete: list, rule: str) -> tuple[list[tuple[int, int]], str | None]:
    """(chosen, rejected) trace index pairs under `rule`, or ([], the reason there is none).

    - seed: the pipeline's rule, exactly: two traces, exactly one of them correct -> (correct, other);
      completeness is not looked at (reasons: not_two_traces, no_correct_trace, no_incorrect_trace);
    - best_vs_worst: one pair per problem among the complete traces with a verdict: the first correct
      trace that Math-Verify decided (else the first the LLM decided) vs the first incorrect one, in the
      same order; no length or other preference enters (reasons: no_correct_trace, no_incorrect_trace,
      incomplete when the missing side exists only as a truncated trace, no_verdict);
    - all_pairs: every (correct, incorrect) pair of complete traces (same reasons)."""
    n = len(verdict)
    if rule == "seed":
        if n != 2:
            return [], Reason.NOT_TWO_TRACES
        right = [i for i in range(n) if verdict[i] is True]
        if len(right) == 1:
            return [(right[0], 1 - right[0])], None
        return [], Reason.NO_CORRECT_TRACE if not right else Reason.NO_INCORRECT_TRACE
    if all(v is None for v in verdict):
        return [], Reason.NO_VERDICT
    right = [i for i in range(n) if complete[i] and verdict[i] is True]
    wrong = [i for i in range(n) if complete[i] and verdict[i] is False]
    if not right:
        return [], _missing(True, verdict, complete)
    if not wrong:
        return [], _missing(False, verdict, complete)
    if rule == "all_pairs":
        return [(i, j) for i in right for j in wrong], None
    first = lambda idx: sorted(idx, key=lambda i: (by[i] != "verdicts", i))[0]  # noqa: E731
    return [(first(right), first(wrong))], None


def _messages_answer(row: dict, spec: SourceSpec) -> str | None:
    """The final assistant turn of the `messages` column (OpenR1: one correct generation), or None."""
    value = _get(row, spec, "messages", required=False)
    if not isinstance(value, list):
        return None
    for m in reversed(value):
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str) \
                and m["content"].strip():
            return m["content"]
    return None


def adapt_multi_trace(row: dict, spec: SourceSpec, source_file: str, source_row: int) -> list:
    """One problem with n traces -> its CoT record(s) and its preference pair(s) (options):

    - cot_rows `messages` (default: the pipeline's CoT, one per problem, id = the problem's id): the
      final assistant turn of `messages`; `correct`: every trace that is correct and complete (id
      '<id>#g<i>'); a problem without one is a removed `no_cot_answer` / `no_correct_trace` row;
    - pairs under options.pair_rule (trace_pairs; id '<id>#pair' or '<id>#pair<i>-<j>'): chosen /
      rejected = the two traces, the message lists = [problem, trace]; a problem without a pair is one
      removed row under the rule's reason.

    Metadata keeps the row without its traces and messages (a problem's traces are written once, in the
    records that hold them) + which trace(s) the record holds and whose verdict decided."""
    rid = _row_id(row, spec, source_file, source_row)
    problem = _text(row, spec, "prompt")
    tcol = spec.column("traces")
    traces = _get(row, spec, "traces")
    if not isinstance(traces, list) or not all(isinstance(t, str) for t in traces):
        raise RowReject(Reason.BAD_TRACES, tcol, f"expected a list of strings, got {type(traces).__name__}")
    if not traces:
        raise RowReject(Reason.NO_TRACES, tcol, "the list of traces is empty")
    verdict, by, complete = trace_verdicts(row, spec, len(traces))
    messages = [{"role": "user", "content": problem}]
    drop = {c for c in (tcol, spec.column("messages")) if c}
    base = {k: v for k, v in row.items() if k not in drop}
    reference = _text(row, spec, "reference_answer", required=False)
    out: list = []

    def meta(**extra) -> str:
        return json.dumps({**base, **extra}, ensure_ascii=False, default=str)

    if spec.option("cot_rows") == "messages":
        answer = _messages_answer(row, spec)
        if answer is None:
            out.append(RowReject(Reason.NO_COT_ANSWER, spec.column("messages"), "no assistant turn in messages",
                                 outcome="removed"))
        else:
            out.append(_record(source_prompt_id=rid, prompt=problem, messages=messages, response=answer,
                               reference_answer=reference, metadata=meta(cot_from="messages")))
    else:
        good = [i for i in range(len(traces)) if verdict[i] is True and complete[i]]
        if not good:
            out.append(RowReject(_missing(True, verdict, complete), tcol, "no correct and complete trace",
                                 outcome="removed"))
        for i in good:
            out.append(_record(source_prompt_id=f"{rid}#g{i}", prompt=problem, messages=messages,
                               response=traces[i], reference_answer=reference,
                               metadata=meta(trace=i, verdict_by=by[i])))
    rule = spec.option("pair_rule")
    pairs, why = trace_pairs(verdict, by, complete, rule)
    if why is not None:
        detail = (f"rule {rule}: verdicts {verdict}, complete {complete}")
        out.append(RowReject(why, tcol, detail, outcome="removed"))
    for i, j in pairs:
        pid = f"{rid}#pair" if rule != "all_pairs" else f"{rid}#pair{i}-{j}"
        out.append(_record(
            source_prompt_id=pid, prompt=problem, messages=messages, chosen=traces[i], rejected=traces[j],
            chosen_messages=messages + [{"role": "assistant", "content": traces[i]}],
            rejected_messages=messages + [{"role": "assistant", "content": traces[j]}],
            reference_answer=reference,
            metadata=meta(pair_rule=rule, chosen_trace=i, rejected_trace=j, chosen_verdict_by=by[i],
                          rejected_verdict_by=by[j])))
    return out
