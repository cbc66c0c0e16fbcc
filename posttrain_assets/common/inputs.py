"""The one contract of the prompt / SFT tables a model stage reads by config (`input_asset`): per table,
its row id column, its text (instruction / prompt) column, its response column (None: a prompt-only
table), the conversation column that keeps a multi-turn prompt whole, and the language column.
Each stage names the tables it can read (quality_tags: tagging/tags.py `TAG_INPUTS`,
attribute_labelled_sft: steerlm/labelling.py `INPUT_ASSETS`, preference_pairs: synthesis/pairs.py
`INPUTS`, evolved_instructions: synthesis/evolution.py `INPUTS`); `input_table` gives the contract of
one of them, or an error listing the stage's choices. Pure: pyarrow only.

    asset                  id             text         response   messages
    magpie_instructions    uuid           instruction  response
    evolved_instructions   id             input        output
    sft_records            all_prompt_id  prompt       answer     messages
    deduplicated_prompts   all_prompt_id  prompt       response   messages  (response null for prompt-only sources)
    selected_seeds         all_prompt_id  prompt       solution             (CoT: reasoning + final answer)
    hard_problems          all_prompt_id  prompt       -
    filtered_instructions  id             instruction  response             (quality_tags' rows)

`input_items` (quality_tags, attribute_labelled_sft) normalises a table with a response column to
(row id, instruction, response or null).
Rows that cannot be tagged are counted rejects (RowIssue, field named): `missing_id` (null or
blank id), `duplicate_id` (a later row with an id already seen; `duplicate_of` names it),
`empty_instruction` (null, empty or whitespace only). A blank response is no response (null). A
table without one of its columns, or with a column that is not text, is an error naming the
source, the asset and the field (ValueError), not a reject per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import pyarrow as pa

from resources.reasons import Reason

from . import asset_names as A
from .accounting import RowIssue, raw_preview


@dataclass(frozen=True)
class InputTable:
    """Where one input table keeps what a model stage reads."""
    asset: str
    id: str  # the row id column
    text: str  # the instruction / prompt column
    response: Optional[str] = None  # the response column; None: a prompt-only table
    messages: Optional[str] = None  # a conversation column (used when the table has it and the row's is set)
    language: str = "language"  # used when the table has it; otherwise the language is detected


#: every table a model stage can read by config, by asset name
INPUT_TABLES: dict[str, InputTable] = {t.asset: t for t in (
    InputTable(A.MAGPIE_INSTRUCTIONS, id="uuid", text="instruction", response="response"),
    InputTable(A.EVOLVED_INSTRUCTIONS, id="id", text="input", response="output"),
    InputTable(A.SFT_RECORDS, id="all_prompt_id", text="prompt", response="answer", messages="messages"),
    InputTable(A.DEDUPLICATED_PROMPTS, id="all_prompt_id", text="prompt", response="response", messages="messages"),
    InputTable(A.SELECTED_SEEDS, id="all_prompt_id", text="prompt", response="solution"),
    InputTable(A.HARD_PROBLEMS, id="all_prompt_id", text="prompt"),
    InputTable(A.FILTERED_INSTRUCTIONS, id="id", text="instruction", response="response"),
)}


def input_table(asset: str, allowed: Iterable[str]) -> InputTable:
    """The contract of `asset`, one of the tables a stage can read (`allowed`, in the order the error
    lists them); ValueError naming the choices for any other name."""
    allowed = list(allowed)
    if asset not in allowed or asset not in INPUT_TABLES:
        raise ValueError(f"input_asset must be one of {', '.join(allowed)}, got {asset!r}")
    return INPUT_TABLES[asset]


#: the tables with a response column (what `input_items` can read when the caller names no choices)
WITH_RESPONSE = tuple(a for a, t in INPUT_TABLES.items() if t.response)


@dataclass(frozen=True)
class Item:
    index: int  # the row's position in the input table
    id: str
    instruction: str
    response: Optional[str]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def input_items(table: pa.Table, source: str, asset: str,
                allowed: Iterable[str] = WITH_RESPONSE) -> tuple[list[Item], list[RowIssue]]:
    """The taggable rows of `table` (an `asset` partition of `source`, one of the tables `allowed`,
    each with a response column) and the rejected ones."""
    spec = input_table(asset, allowed)
    id_col, ins_col, res_col = spec.id, spec.text, spec.response
    if res_col is None:
        raise ValueError(f"source {source!r}, {asset}: a prompt-only table (no response column) cannot be read here")
    where = f"source {source!r}, {asset}"
    missing = [c for c in (id_col, ins_col, res_col) if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: no column {', '.join(repr(c) for c in missing)} "
                         f"(columns: {', '.join(table.column_names) or 'none'})")
    for c in (id_col, ins_col, res_col):
        if not _is_text(table.schema.field(c).type):
            raise ValueError(f"{where}: field {c!r} must be a text column, got {table.schema.field(c).type}")
    items, issues, seen = [], [], {}
    ids, ins, res = (table[c].to_pylist() for c in (id_col, ins_col, res_col))
    for i, (rid, text, resp) in enumerate(zip(ids, ins, res)):
        def reject(reason: str, fld: str, detail: str, duplicate_of: Optional[str] = None) -> None:
            issues.append(RowIssue(reason=reason, source_row=i, source_file=asset, field=fld, detail=detail,
                                   duplicate_of=duplicate_of, raw=raw_preview(text) if text is not None else None))

        if rid is None or not rid.strip():
            reject(Reason.MISSING_ID, id_col, "the row has no id")
            continue
        if rid in seen:
            reject(Reason.DUPLICATE_ID, id_col, f"id {rid!r} also at row {seen[rid]}", duplicate_of=rid)
            continue
        seen[rid] = i
        if text is None or not text.strip():
            reject(Reason.EMPTY_INSTRUCTION, ins_col, f"id {rid!r}: the instruction is empty")
            continue
        items.append(Item(index=i, id=rid, instruction=text,
                          response=resp if resp is not None and resp.strip() else None))
    return items, issues
