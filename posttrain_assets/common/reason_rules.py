"""The hygiene rules' reasons (posttrain_assets/hygiene/rules.py): which rule a reject's reason belongs
to, for the stage's metadata and the export's dataset card (the export imports no stage)."""

from resources.reasons import Reason

#: rule -> the reasons it gives (the card and the docs list them)
RULE_REASONS = {
    "empty": (Reason.EMPTY_RESPONSE,), "format_tokens": (Reason.FORMAT_TOKENS,),
    "unclosed_fence": (Reason.UNCLOSED_FENCE,), "identity": (Reason.IDENTITY_LEAK,),
    "knowledge_cutoff": (Reason.KNOWLEDGE_CUTOFF,), "refusal": (Reason.REFUSAL,),
    "repetition": (Reason.REPEATED_PARAGRAPH, Reason.REPEATED_SENTENCE, Reason.REPEATED_NGRAMS),
    "truncated": (Reason.CUT_AT_LENGTH_LIMIT,), "language": (Reason.LANGUAGE_MISMATCH,),
    "script": (Reason.FOREIGN_SCRIPT, Reason.FOREIGN_HANZI, Reason.LOW_KANA_SHARE, Reason.CHINESE_VARIANT),
    "length": (Reason.TOO_SHORT_FOR_PROMPT,)}
#: reason -> its rule
RULE_OF = {str(reason): rule for rule, reasons in RULE_REASONS.items() for reason in reasons}
#: the Parquet schema metadata key under which a clean table records the actions and lists version it
#: was filtered with (JSON): the export's card reads it per source
HYGIENE_METADATA_KEY = "posttrain.hygiene"

