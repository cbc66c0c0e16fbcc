"""The seed's three record schemas from deduplicated prompts (SFT, CoT, preference)."""

from collections import defaultdict
import json
import re
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from resources.reasons import Reason

from ..common.accounting import RowIssue
from ..common.answers import GSM8K_FINAL, last_boxed
from ..common.schemas import MESSAGE_TYPE, with_answer

SFT_KINDS = ("sft", "attributes", "synthetic")  # synthetic: magpie instruction -> response
COT_KINDS = ("cot",)
SFT_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("answer", pa.string()), ("metadata", pa.string()), ("source", pa.string()),
    ("messages", MESSAGE_TYPE),  # the whole conversation, answer included
])
COT_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("thinking", pa.string()), ("answer", pa.string()), ("metadata", pa.string()),
    ("source", pa.string()), ("split_rule", pa.string()),
])
PREFERENCE_SCHEMA = pa.schema([
    ("all_prompt_id", pa.string()), ("source_prompt_id", pa.string()), ("prompt", pa.string()),
    ("chosen", pa.string()), ("rejected", pa.string()), ("metadata", pa.string()),
    ("source", pa.string()), ("messages", MESSAGE_TYPE),  # the prompt conversation (multi-turn kept)
    ("tie", pa.bool_()), ("rejected_id", pa.string()),  # ranked replies: the rejected reply's record
    # each side's whole conversation, every turn (TRL's conversational format with an implicit prompt);
    # a tie holds its two sides in source order
    ("chosen_messages", MESSAGE_TYPE), ("rejected_messages", MESSAGE_TYPE),
    ("tie_kind", pa.string()),  # 'tie' | 'both_bad' where `tie`; else null
])
#: adapters of kind `cot` sources whose rows also hold preference pairs (multi_trace)
PAIR_ADAPTERS = ("multi_trace",)


def _issue(rec: dict, reason: str, detail: str = "", outcome: str = "removed") -> RowIssue:
    return RowIssue(reason=reason, outcome=outcome, source_row=rec["source_row"],
                    source_file=rec["source_file"], detail=detail, raw=rec["prompt"][:2000])


def best_ranks(prompts: pa.Table, best_rank: Optional[dict[str, int]] = None) -> dict[str, int]:
    """The best (lowest) reply rank per prompt text, over the rows with a response and a rank
    (OASST); `best_rank` is updated in place when given (one batch at a time)."""
    best_rank = {} if best_rank is None else best_rank
    ranked = prompts.select(["prompt", "rank", "response"])
    ranked = ranked.filter(pc.and_(pc.is_valid(ranked["rank"]), pc.is_valid(ranked["response"])))
    for p, rank in zip(ranked["prompt"].to_pylist(), ranked["rank"].to_pylist()):
        best_rank[p] = min(best_rank.get(p, rank), rank)
    return best_rank


def sft_from(prompts: pa.Table, best_reply_only: bool = True,
             best_rank: Optional[dict[str, int]] = None) -> tuple[pa.Table, list[RowIssue]]:
    """`best_rank`: the best rank per prompt over the whole source (`best_ranks`) when `prompts`
    is one batch of it; None: computed from `prompts`."""
    rows, issues = [], []
    recs = prompts.to_pylist()
    if best_rank is None:
        best_rank = best_ranks(prompts)
    for r in recs:
        if r["response"] is None or not r["response"].strip():
            issues.append(_issue(r, Reason.NO_RESPONSE, "prompt without an answer (a seed for synthesis)"))
            continue
        if best_reply_only and r["rank"] is not None and r["rank"] != best_rank[r["prompt"]]:
            issues.append(_issue(r, Reason.NOT_BEST_REPLY, f"rank {r['rank']} > best {best_rank[r['prompt']]}"))
            continue
        rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                     "prompt": r["prompt"], "answer": r["response"], "metadata": r["metadata"],
                     "source": r["source"],
                     "messages": list(r["messages"]) + [{"role": "assistant", "content": r["response"]}]})
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA), issues


THINK = re.compile(r"<think>(.*?)</think>(.*)", re.S)


def split_reasoning(text: str, reference_answer: Optional[str] = None,
                    answer_rule: str = "auto") -> tuple[str, str, str]:
    """(thinking, answer, rule). <think>...</think> tags always split (rule 'think_tags'); otherwise
    the source's `answer_rule`: auto = after the last '####' (gsm8k_marker), else the last \\boxed{}
    (boxed; the reasoning keeps it); boxed / gsm8k = only that one; none = no extraction. When the two
    cannot be separated, everything is thinking and the answer is "" (rule 'unsplit'), as the seed does
    for LIMO / NuminaMath."""
    m = THINK.search(text)
    if m:
        return m.group(1).strip(), m.group(2).strip(), "think_tags"
    if answer_rule in ("auto", "gsm8k") and GSM8K_FINAL in text:
        body, final = text.rsplit(GSM8K_FINAL, 1)
        return body.strip(), final.strip().replace(",", ""), "gsm8k_marker"
    boxed = last_boxed(text) if answer_rule in ("auto", "boxed") else None
    if boxed is not None:
        return text.strip(), boxed, "boxed"
    return text.strip(), "", "unsplit"


def cot_from(prompts: pa.Table, answer_rule: str = "auto") -> tuple[pa.Table, list[RowIssue]]:
    rows, issues = [], []
    for r in prompts.to_pylist():
        if r["response"] is None and r["chosen"] is not None:  # a multi-trace problem's pair
            issues.append(_issue(r, Reason.PREFERENCE_PAIR, "a pair of traces: in preference_records"))
            continue
        if r["response"] is None or not r["response"].strip():
            issues.append(_issue(r, Reason.NO_RESPONSE, "no solution to split"))
            continue
        thinking, answer, rule = split_reasoning(r["response"], r["reference_answer"], answer_rule)
        rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                     "prompt": r["prompt"], "thinking": thinking, "answer": answer,
                     "metadata": r["metadata"], "source": r["source"], "split_rule": rule})
    return pa.Table.from_pylist(rows, schema=COT_SCHEMA), issues


def preference_from(prompts: pa.Table, kind: str) -> tuple[pa.Table, list[RowIssue]]:
    """Preference sources map row by row; `pairs` (a multi-trace CoT source): its pair rows map the
    same way and its CoT rows are counted `cot_trace`; other sources pair each prompt's best and worst
    ranked reply."""
    rows, issues = [], []
    recs = prompts.to_pylist()
    if kind in ("preference", "pairs"):
        for r in recs:
            if kind == "pairs" and r["chosen"] is None and r["response"] is not None:
                issues.append(_issue(r, Reason.COT_TRACE, "a CoT row of the problem: in cot_records"))
                continue
            if r["chosen"] is None or r["rejected"] is None:
                issues.append(_issue(r, Reason.NO_PAIR, "chosen or rejected missing", outcome="rejected"))
                continue
            tie_kind = r.get("tie_kind")
            if tie_kind is None and r["preference_score"] == 0:  # rows merged before tie_kind existed
                tie_kind = "tie"
            rows.append({"all_prompt_id": r["all_prompt_id"], "source_prompt_id": r["source_prompt_id"],
                         "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                         "metadata": r["metadata"], "source": r["source"], "messages": r["messages"],
                         "tie": tie_kind is not None, "rejected_id": None,
                         "chosen_messages": r.get("chosen_messages") or with_answer(r["messages"], r["chosen"]),
                         "rejected_messages": r.get("rejected_messages") or with_answer(r["messages"], r["rejected"]),
                         "tie_kind": tie_kind})
        return pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA), issues
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r["response"] is not None and r["rank"] is not None:
            by_prompt[r["prompt"]].append(r)
        else:
            issues.append(_issue(r, Reason.NO_RANKED_REPLY))
    for group in by_prompt.values():
        ranks = sorted(group, key=lambda r: (r["rank"], r["all_prompt_id"]))
        best, worst = ranks[0], ranks[-1]
        if len(ranks) < 2 or best["rank"] == worst["rank"]:
            issues.extend(_issue(r, Reason.NO_RANKED_PAIR, "fewer than two differently ranked replies") for r in ranks)
            continue
        rows.append({"all_prompt_id": best["all_prompt_id"], "source_prompt_id": best["source_prompt_id"],
                     "prompt": best["prompt"], "chosen": best["response"], "rejected": worst["response"],
                     "metadata": json.dumps({"chosen": json.loads(best["metadata"]),
                                             "rejected": json.loads(worst["metadata"])}, ensure_ascii=False),
                     "source": best["source"], "messages": best["messages"], "tie": False,
                     "rejected_id": worst["all_prompt_id"],
                     "chosen_messages": with_answer(best["messages"], best["response"]),
                     "rejected_messages": with_answer(worst["messages"], worst["response"]),
                     "tie_kind": None})
        issues.extend(_issue(r, Reason.PAIRED, f"in the pair of {best['all_prompt_id']}") for r in ranks[1:])
    return pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA), issues
