"""Text normalisation shared by the stages (exact dedup keys, string answer comparison)."""

import hashlib
import unicodedata


def normalize_text(text: str) -> str:
    """The exact-duplicate form: Unicode NFKC, case-folded, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
