"""Language identification of prompts (py3langid, its model bundled in the wheel; ISO 639-1 codes).

Kana decides Japanese (langid reads kanji-heavy Japanese as Chinese); a text without letters is
`und`. Identification reads at most the first 2,000 characters."""

import re

UNDETERMINED = "und"
KANA = re.compile(r"[\u3040-\u30ff]")
LETTER = re.compile(r"[^\W\d_]")


def detect_language(text: str | None) -> str:
    if not text or not LETTER.search(text):
        return UNDETERMINED
    sample = text[:2000]
    if KANA.search(sample):
        return "ja"
    import py3langid

    lang = py3langid.classify(sample)[0]
    return UNDETERMINED if lang == "zxx" else lang
