"""Final-answer extraction and comparison (GSM8K '####', \\boxed{}, last number; math-verify)."""

import re
from typing import Optional

from .text import normalize_text

GSM8K_FINAL = "####"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_final_answer(text: str) -> str:
    """The model's final answer: after the last '####', else the last \\boxed{}, else the last number."""
    if GSM8K_FINAL in text:
        return text.rsplit(GSM8K_FINAL, 1)[1].strip().split("\n")[0].strip().replace(",", "")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    nums = NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else text.strip()


def answers_match(answer: str, gold: str, math: bool) -> bool:
    if not math:
        return normalize_text(answer) == normalize_text(gold) and bool(gold.strip())
    if answer.strip() == gold.strip():
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(gold), parse(answer)))
    except Exception:  # noqa: BLE001 - an unparseable answer is simply wrong
        return False
