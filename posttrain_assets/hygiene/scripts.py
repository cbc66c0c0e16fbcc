"""Scripts and language of a text, for the language-fidelity rules. Pure Python + regex, no model.

A text's letters are counted by script: kana, Han (CJK ideographs), Hangul, Latin, Cyrillic, other
(Arabic, Thai, Devanagari, ...); Greek is neutral (math). Code (fenced or inline), URLs and LaTeX are
left out before counting: an English answer made of Python is not "undetermined English".

The language, coarse (scripts only): a text of Japanese / Chinese characters (kana + Han at least
`CJK_SHARE` of the letters, at least `MIN_CJK`) is `ja` when kana make at least `KANA_JA` of them (kana
decides Japanese, as in the ingest's language id), else `zh`; mostly Hangul is `ko`; otherwise the
script family (`latin`, `cyrillic`, `other`) when it has at least `MIN_FAMILY_LETTERS` letters and
no kana or Han (a Latin text with some is mixed), else `und`. Two families differ without a model ("Who was Socrates?" answered in Japanese). Within a family,
py3langid (the language-id library of ingest, its model bundled in the wheel) reads the first
`LANGID_CHARS` characters of a text with at least `min_letters` letters, and says `und` when it is
less than `LANGID_MIN_PROB` sure; two texts that are both plainly English (4+ English function words)
need no model.

Which Han characters belong where comes from the codecs of the standard library, not from a list:
- Japanese: a Han character outside JIS X 0208 + its Microsoft extensions (`cp932`) is foreign to a
  Japanese text: 们 这 说 时 对 发 图 (Simplified) or 說 (Traditional) are not in it; 国 学 会 気 発 are.
- Chinese: a character in GB 2312 but not Big5 is Simplified-only (们 这 国 学 发), one in Big5 but not
  GB 2312 Traditional-only (們 這 國 學 發); those in both (人 大 中) are neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

KANA = "\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HANGUL = "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
CYRILLIC = "\u0400-\u04ff"
GREEK = "\u0370-\u03ff"
SCRIPTS = ("kana", "han", "hangul", "latin", "cyrillic", "other")
_RUNS = {name: re.compile(f"[{chars}]+") for name, chars in
         (("kana", KANA), ("han", HAN), ("hangul", HANGUL), ("latin", LATIN), ("cyrillic", CYRILLIC))}
LETTER = re.compile(r"[^\W\d_]")
_LETTER_RUNS = re.compile(r"[^\W\d_]+")
_GREEK_RUNS = re.compile(f"[{GREEK}]+")

#: what the counts leave out: fenced code, inline code, URLs, LaTeX math and commands
_CODE_FENCE = re.compile(r"(?ms)^[ \t]{0,3}(```|~~~).*?(?:^[ \t]{0,3}\1[ \t]*$|\Z)")
_NOISE = re.compile(r"`[^`\n]*`|https?://\S+|\$\$.*?\$\$|\$[^$\n]*\$|\\\[.*?\\\]|\\\(.*?\\\)|\\[A-Za-z]+",
                    re.S)

EN_FUNCTION_WORDS = frozenset({"the", "and", "is", "of", "to", "that", "it", "you", "for", "with", "this", "are"})
_WORD = re.compile(r"[a-z]+")
CJK_SHARE = 0.3  # kana + Han from this share of the letters: a Japanese / Chinese text (a Latin letter is a
# fraction of a word, a Han character about one: 「Bohemian Rhapsody」 in a Japanese answer is not English)
MIN_FAMILY_LETTERS = 10  # fewer letters: not even the script family is told ("OK", "x = 3")
MIN_CJK = 10  # fewer Japanese / Chinese / Korean characters: too few to tell ja from zh (`und`)
KANA_JA = 0.05  # kana share of kana + Han from which a CJK text is Japanese
LANGID_CHARS = 200
LANGID_MIN_PROB = 0.9  # below: `und` (a list of names or dishes reads as Kinyarwanda or Italian at 0.2-0.8)
UND = "und"
#: the scripts each language writes in (a text may also use any script its prompt uses)
EXPECTED = {"ja": {"kana", "han", "latin"}, "zh": {"han", "latin"}, "ko": {"hangul", "han", "latin"},
            "cyrillic": {"cyrillic", "latin"}, "latin": {"latin"}, "other": {"other", "latin"}}


def prose(text: str) -> str:
    """The text without fenced code, inline code, URLs and LaTeX."""
    if "```" in text or "~~~" in text:
        text = _CODE_FENCE.sub(" ", text)
    if any(c in text for c in "`$\\") or "http" in text:
        text = _NOISE.sub(" ", text)
    return text


@dataclass(frozen=True)
class Scripts:
    """Letters per script of one text (its prose), and the language read from them."""

    kana: int = 0
    han: int = 0
    hangul: int = 0
    latin: int = 0
    cyrillic: int = 0
    other: int = 0

    @property
    def letters(self) -> int:
        return self.kana + self.han + self.hangul + self.latin + self.cyrillic + self.other

    @property
    def kana_share(self) -> float:
        """kana / (kana + Han): Japanese prose is mostly 0.3-0.7; Chinese has none."""
        cjk = self.kana + self.han
        return self.kana / cjk if cjk else 0.0

    def present(self) -> set[str]:
        return {s for s in SCRIPTS if getattr(self, s)}


def count_scripts(text: str) -> Scripts:
    """Letters per script of `text` (already prose)."""
    if text.isascii():
        return Scripts(latin=sum(map(len, _RUNS["latin"].findall(text))))
    counts = {name: sum(map(len, rx.findall(text))) for name, rx in _RUNS.items()}
    letters = sum(map(len, _LETTER_RUNS.findall(text))) - sum(map(len, _GREEK_RUNS.findall(text)))
    known = sum(counts.values())
    # kana's prolonged sound mark and iteration marks are letters to \w but not all are in the ranges
    return Scripts(**counts, other=max(0, letters - known))


def coarse_language(scripts: Scripts) -> str:
    """The language as far as scripts tell it, without a model: `ja` / `zh` (kana + Han, at least
    `MIN_CJK` of them), `ko`, or the script family `latin` / `cyrillic` / `other` of a text with at least
    `MIN_FAMILY_LETTERS` letters; else `und`."""
    letters = scripts.letters
    cjk = scripts.kana + scripts.han
    if cjk and cjk >= CJK_SHARE * letters:
        if cjk < MIN_CJK:
            return UND
        return "ja" if scripts.kana_share >= KANA_JA else "zh"
    if scripts.hangul and scripts.hangul * 2 >= letters:
        return "ko" if scripts.hangul >= MIN_CJK else UND
    if letters < MIN_FAMILY_LETTERS or cjk:  # a Latin text with kana / Han in it ("John Butler TrioやYukimasa
        return UND  # Trio。" from a Japanese user) is mixed: compared with nothing
    if scripts.cyrillic * 2 >= letters:
        return "cyrillic"
    return "latin" if scripts.latin * 2 >= letters else "other"


def language(text: str, coarse: str, letters: int, min_letters: int) -> str:
    """ISO 639-1 code of a prose text: its coarse language for ja / zh / ko, else py3langid's (`und`
    below `min_letters` letters or LANGID_MIN_PROB)."""
    if coarse in ("ja", "zh", "ko", UND):
        return coarse
    if letters < min_letters:
        return UND
    return _langid(text[:LANGID_CHARS] if len(text) <= LANGID_CHARS * 4 else _sample(text))


def plainly_english(text: str) -> bool:
    """At least 4 distinct English function words in the first 600 characters: English without asking
    py3langid (most rows of most sources; two English texts need no model to agree)."""
    return len(EN_FUNCTION_WORDS.intersection(_WORD.findall(text[:600].lower()))) >= 4


def _sample(text: str) -> str:
    """The first LANGID_CHARS characters that hold letters (skipping a long run of symbols or numbers)."""
    start = LETTER.search(text)
    return text[start.start(): start.start() + LANGID_CHARS] if start else text[:LANGID_CHARS]


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _langid(sample: str) -> str:
    lang, prob = _identifier().classify(sample)
    return UND if lang == "zxx" or prob < LANGID_MIN_PROB else lang


def expected_scripts(coarse: str, prompt_scripts: set[str]) -> set[str]:
    """The scripts a text in `coarse` language may use: its own, plus those its prompt uses."""
    return EXPECTED[coarse] | prompt_scripts


def warm_up() -> None:
    """Load what the rules read (py3langid's model, ~1.5 s; the Han classes, ~0.2 s) in this process."""
    _identifier()
    han_classes()


def _codec_set(codec: str) -> frozenset[str]:
    out = set()
    for block in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)):
        for cp in range(*block):
            ch = chr(cp)
            try:
                ch.encode(codec)
            except UnicodeEncodeError:
                continue
            out.add(ch)
    return frozenset(out)


def _char_class(chars: frozenset[str]) -> re.Pattern:
    """A regex class of these characters, as ranges of consecutive code points."""
    parts, run = [], []
    for cp in sorted(map(ord, chars)):
        if run and cp == run[-1] + 1:
            run.append(cp)
            continue
        if run:
            parts.append(_span(run[0], run[-1]))
        run = [cp]
    if run:
        parts.append(_span(run[0], run[-1]))
    return re.compile("[" + "".join(parts) + "]") if parts else re.compile("(?!)")


def _span(lo: int, hi: int) -> str:
    return re.escape(chr(lo)) + ("-" + re.escape(chr(hi)) if hi > lo else "")


@lru_cache(maxsize=1)
def han_classes() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """(Han not in cp932, Simplified-only, Traditional-only) as compiled classes, built once (~0.1 s)."""
    han = set()
    for lo, hi in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)):
        han.update(chr(cp) for cp in range(lo, hi))
    jis, gb, big5 = _codec_set("cp932"), _codec_set("gb2312"), _codec_set("big5")
    not_jis = re.compile(_char_class(frozenset(han - jis)).pattern[:-1] + "\U00020000-\U0003134f]")
    return not_jis, _char_class(gb - big5), _char_class(big5 - gb)


def foreign_han(text: str) -> list[re.Match]:
    """The Han characters outside JIS (cp932) of a Japanese text, in order."""
    return list(han_classes()[0].finditer(text))


def chinese_variant(text: str) -> tuple[int, int]:
    """(Simplified-only, Traditional-only) characters of a text."""
    _, simplified, traditional = han_classes()
    return len(simplified.findall(text)), len(traditional.findall(text))
