"""The prompt / SFT tables a model stage can read (config `input_asset`: quality_tags, attribute_labelled_sft), each normalised to
(row id, instruction, response or null). Pure: pyarrow only.

    magpie_instructions   uuid            instruction  response
    evolved_instructions  id              input        output
    sft_records           all_prompt_id   prompt       answer
    deduplicated_prompts  all_prompt_id   prompt       response   (null for prompt-only sources)
    selected_seeds        all_prompt_id   prompt       solution   (CoT: reasoning + final answer)

Rows that cannot be tagged are counted rejects (RowIssue, field named): `missing_id` (null or
blank id), `duplicate_id` (a later row with an id already seen; `duplicate_of` names it),
`empty_instruction` (null, empty or whitespace only). A blank response is no response (null). A
table without one of its columns, or with a column that is not text, is an error naming the
source, the asset and the field (ValueError), not a reject per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from resources.reasons import Reason

from ..common.accounting import RowIssue, raw_preview

#: asset -> (id column, instruction column, response column)
INPUTS: dict[str, tuple[str, str, str]] = {
    "magpie_instructions": ("uuid", "instruction", "response"),
    "evolved_instructions": ("id", "input", "output"),
    "sft_records": ("all_prompt_id", "prompt", "answer"),
    "deduplicated_prompts": ("all_prompt_id", "prompt", "response"),
    "selected_seeds": ("all_prompt_id", "prompt", "solution"),
}


@dataclass(frozen=True)
class Item:
    index: int  # the row's position in the input table
    id: str
    instruction: str
    response: Optional[str]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def input_items(table: pa.Table, source: str, asset: str) -> tuple[list[Item], list[RowIssue]]:
    """The taggable rows of `table` (an `asset` partition of `source`) and the rejected ones."""
    if asset not in INPUTS:
        raise ValueError(f"input_asset must be one of {', '.join(INPUTS)}, got {asset!r}")
    id_col, ins_col, res_col = INPUTS[asset]
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
