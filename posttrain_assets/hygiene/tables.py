"""The tables the hygiene stage reads, and how: input asset -> (its clean asset, TableSpec).

Only the answer a row teaches is checked: a preference pair's `chosen` (its `rejected` is meant to be
worse, a refusal or a loop included), a CoT record's `thinking` (whole rules) and `answer` (a short
final answer: the text rules only), an SFT record's `answer` (the final assistant turn). Every table's
prompt is checked for chat-template tokens too. A preference tie holds its sides as conversations only
(`chosen` empty): its chosen side is the last assistant turn of `chosen_messages`."""

from __future__ import annotations

from ..common import asset_names as A
from .filtering import TableSpec

TABLES: dict[str, tuple[str, TableSpec]] = {
    A.SFT_RECORDS: (A.CLEAN_SFT_RECORDS, TableSpec("all_prompt_id", "prompt", (("answer", "response"),),
                                                   metadata_finish_reason=True)),
    A.COT_RECORDS: (A.CLEAN_COT_RECORDS, TableSpec("all_prompt_id", "prompt",
                                                   (("thinking", "response"), ("answer", "final")))),
    A.PREFERENCE_RECORDS: (A.CLEAN_PREFERENCE_RECORDS, TableSpec("all_prompt_id", "prompt",
                                                                 (("chosen", "response"),),
                                                                 messages_fallback=(("chosen", "chosen_messages"),))),
    A.EVOLVED_INSTRUCTIONS: (A.CLEAN_EVOLVED_INSTRUCTIONS, TableSpec("id", "input", (("output", "response"),))),
    A.GENERATED_SOLUTIONS: (A.CLEAN_GENERATED_SOLUTIONS, TableSpec("all_prompt_id", "prompt",
                                                                   (("solution", "response"),),
                                                                   finish_reason="finish_reason")),
    A.PREFERENCE_PAIRS: (A.CLEAN_PREFERENCE_PAIRS, TableSpec("id", "prompt", (("chosen", "response"),))),
}
#: the record tables (records_job) and the synthetic ones (synthesis_job, where materialised)
RECORD_TABLES = (A.SFT_RECORDS, A.COT_RECORDS, A.PREFERENCE_RECORDS)
SYNTHETIC_TABLES = (A.EVOLVED_INSTRUCTIONS, A.GENERATED_SOLUTIONS, A.PREFERENCE_PAIRS)
