"""N-gram overlap between training text and benchmark items, the same in every language.

Text is normalised (NFKC, casefold) and cut into tokens by script, not by spaces: a run of letters or
digits of a space-separated script is one token (a word), and every Japanese / Chinese character
(kana, CJK ideographs) is a token of its own. Punctuation and white space are no tokens, so
"ｘ＝３" and "x = 3", or a Japanese sentence with and without spaces between its words, give the
same tokens. The public recipes split on white space, which makes one "word" of a whole Japanese
sentence and finds no n-gram in it.

An item is indexed with n-grams of `n` tokens (words), or of `cjk_n` characters when most of its
tokens are CJK characters. A training text is hashed at every n the index uses. Tokens hash with
blake2b (stable across processes) and n-grams with a polynomial over the token hashes (numpy,
uint64 arithmetic), over a whole batch of rows at once.

For a (training row, item) pair that shares n-grams three measures are computed:
- `coverage` (the default rule): the share of the item's *distinctive* tokens (those inside the
  item's n-grams that no other item of the same benchmark has) that lie in n-grams the row shares.
  N-grams several items of a benchmark have are its template ("Which of these is a string or
  percussion instrument: X, Y"), not its content: a row with the template and other X, Y does not
  fire, a copy of the item with one changed number does. An item without distinctive n-grams (a
  duplicate inside its benchmark) counts all of them.
- `tulu_coverage`: Tulu 3's rule (open-instruct decontamination/search.py): the share of all the
  item's tokens that lie in shared n-grams.
- `shared_ngrams`: how many of the item's n-grams the row has (open-r1: one is enough).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..common.tokens import CJK_CHARS, CJK_RE, TOKEN_RE, is_cjk, normalize, tokenize  # noqa: F401 (re-exported)

RULES = ("coverage", "tulu", "any_ngram")
_P = np.uint64(0x100000001B3)  # FNV-64 prime: the polynomial's base


def render(tokens: Sequence[str]) -> str:
    """Tokens back to text: a space between two words, none next to a CJK character."""
    out: list[str] = []
    for i, t in enumerate(tokens):
        if i and not (CJK_RE.fullmatch(t) or CJK_RE.fullmatch(tokens[i - 1])):
            out.append(" ")
        out.append(t)
    return "".join(out)


@lru_cache(maxsize=1 << 20)
def token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def token_ids(tokens: Sequence[str]) -> np.ndarray:
    return np.fromiter((token_hash(t) for t in tokens), dtype=np.uint64, count=len(tokens))


def window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of every n-gram of one token-hash sequence, in order (empty when shorter than n)."""
    size = len(ids) - n + 1
    if size <= 0:
        return np.zeros(0, np.uint64)
    h = np.full(size, np.uint64(n), np.uint64)
    for k in range(n):
        h = h * _P + ids[k:k + size]
    return h


def batch_windows(ids: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram of a batch of rows whose token hashes are concatenated in `ids` (row r holds
    ids[offsets[r]:offsets[r+1]]): (row of each n-gram, its hash)."""
    rows = len(offsets) - 1
    lengths = np.diff(offsets)
    h = window_hashes(ids, n)
    if not len(h):
        return np.zeros(0, np.int64), h
    row_of = np.repeat(np.arange(rows, dtype=np.int64), lengths)[:len(h)]
    valid = np.arange(len(h)) + n <= offsets[1:][row_of]
    return row_of[valid], h[valid]


# ------------------------------------------------------------------------------------------ index
INDEX_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("item_id", pa.string()), ("language", pa.string()),
    ("question", pa.string()), ("answer", pa.string()),
    ("part", pa.string()),  # 'question' (matched against prompts) | 'answer' (against responses)
    ("n", pa.int64()), ("tokens", pa.list_(pa.string())),
    ("hashes", pa.list_(pa.uint64())), ("distinctive", pa.list_(pa.bool_())),
    ("vector", pa.list_(pa.float32())),  # the question's unit embedding (semantic candidates); null for answers
])


def index_rows(items: pa.Table, n: int, cjk_n: int, answer_benchmarks: Iterable[str] = ()) -> tuple[pa.Table, dict]:
    """Benchmark items (benchmarks.load_all: benchmark, item_id, language, question, answer,
    match_text) -> one index row per item part (its question; its reference answer too for the
    benchmarks in `answer_benchmarks`) with its tokens, n-gram hashes and which
    n-grams are distinctive (no other item of the same benchmark has them), plus stats: items per
    benchmark and those too short for one n-gram (they cannot be matched; counted, not hidden)."""
    parts, answer_benchmarks = [], set(answer_benchmarks)
    for r in items.to_pylist():
        parts.append((r, "question", r["match_text"]))
        if r["benchmark"] in answer_benchmarks and r.get("answer"):
            parts.append((r, "answer", r["answer"]))
    rows, too_short = [], {}
    for r, part, text in parts:
        toks = tokenize(text)
        size = cjk_n if is_cjk(toks) else n
        hashes = window_hashes(token_ids(toks), size)
        if not len(hashes):
            too_short.setdefault(r["benchmark"], {}).setdefault(part, []).append(r["item_id"])
            continue
        rows.append({"benchmark": r["benchmark"], "item_id": r["item_id"], "language": r["language"],
                     "question": r["question"], "answer": r.get("answer"), "part": part, "n": size,
                     "tokens": toks, "hashes": hashes, "vector": None})
    # distinctive: an n-gram that one item only (of its benchmark and part) has
    owners: dict[tuple, set] = {}
    for i, row in enumerate(rows):
        for h in set(row["hashes"].tolist()):
            owners.setdefault((row["benchmark"], row["part"], h), set()).add(row["item_id"])
    for row in rows:
        row["distinctive"] = [len(owners[(row["benchmark"], row["part"], h)]) == 1 for h in row["hashes"].tolist()]
        row["hashes"] = row["hashes"].tolist()
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    stats = {"items": {b: int(c) for b, c in zip(*np.unique(items["benchmark"].to_numpy(zero_copy_only=False),
                                                               return_counts=True))} if items.num_rows else {},
             "index_rows": table.num_rows, "too_short": too_short, "n": n, "cjk_n": cjk_n}
    return table, stats


# ---------------------------------------------------------------------------------------- matcher
@dataclass
class Match:
    benchmark: str
    item_id: str
    part: str  # question | answer
    field: str  # prompt | response
    coverage: float
    tulu_coverage: float
    shared_ngrams: int
    span: str


MATCH_TYPE = pa.struct([("benchmark", pa.string()), ("item_id", pa.string()), ("part", pa.string()),
                        ("field", pa.string()), ("coverage", pa.float64()), ("tulu_coverage", pa.float64()),
                        ("shared_ngrams", pa.int64()), ("span", pa.string())])


def _covered(starts: np.ndarray, n: int, length: int) -> np.ndarray:
    """Which of `length` tokens lie in one of the n-grams starting at `starts`."""
    mark = np.zeros(length + 1, np.int64)
    np.add.at(mark, starts, 1)
    np.add.at(mark, starts + n, -1)
    return np.cumsum(mark)[:length] > 0


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    best, start = (0, 0), None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


class Matcher:
    """The index (index_rows' table) in memory: sorted n-gram hashes per n and part, with the row and
    position of each; `match(prompts, responses)` -> per training row, its matches above nothing
    (every item that shares an n-gram), each with the three measures and the longest covered span."""

    def __init__(self, index: pa.Table):
        self.rows = index.to_pylist()
        self.lookup: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        keys: dict[tuple[int, str], list] = {}
        for i, r in enumerate(self.rows):
            h = np.asarray(r["hashes"], np.uint64)
            keys.setdefault((r["n"], r["part"]), []).append((h, np.full(len(h), i, np.int64),
                                                             np.arange(len(h), dtype=np.int64)))
            r["_distinctive"] = np.asarray(r["distinctive"], bool)
            if not r["_distinctive"].any():  # a duplicate inside its benchmark: all its n-grams count
                r["_distinctive"] = np.ones(len(h), bool)
            r["_hashes"] = h
        for key, chunks in keys.items():
            h = np.concatenate([c[0] for c in chunks])
            order = np.argsort(h, kind="stable")
            self.lookup[key] = (h[order], np.concatenate([c[1] for c in chunks])[order],
                                np.concatenate([c[2] for c in chunks])[order])

    @property
    def sizes(self) -> set[int]:
        return {n for n, _ in self.lookup}

    def _pairs(self, texts: Sequence[Optional[str]], part: str) -> dict[tuple[int, int], set]:
        """(training row, index row) -> the index row's n-gram positions the training row has."""
        toks = [tokenize(t) if t else [] for t in texts]
        offsets = np.zeros(len(toks) + 1, np.int64)
        offsets[1:] = np.cumsum([len(t) for t in toks])
        ids = np.concatenate([token_ids(t) for t in toks]) if offsets[-1] else np.zeros(0, np.uint64)
        out: dict[tuple[int, int], set] = {}
        for (n, p), (keys, owner, pos) in self.lookup.items():
            if p != part:
                continue
            rows, hashes = batch_windows(ids, offsets, n)
            hit = np.isin(hashes, keys)
            for r, h in set(zip(rows[hit].tolist(), hashes[hit].tolist())):
                lo, hi = np.searchsorted(keys, np.uint64(h), "left"), np.searchsorted(keys, np.uint64(h), "right")
                for j in range(lo, hi):
                    out.setdefault((r, int(owner[j])), set()).add(int(pos[j]))
        return out

    def _measure(self, item: int, positions: set, field: str) -> Match:
        r = self.rows[item]
        n, length = r["n"], len(r["tokens"])
        starts = np.asarray(sorted(positions), np.int64)
        covered = _covered(starts, n, length)
        dist = r["_distinctive"]
        dist_tokens = _covered(np.flatnonzero(dist), n, length)
        dist_hit = _covered(starts[dist[starts]], n, length) if len(starts) else np.zeros(length, bool)
        a, b = _longest_run(covered)
        return Match(benchmark=r["benchmark"], item_id=r["item_id"], part=r["part"], field=field,
                     coverage=round(float(dist_hit.sum() / max(1, dist_tokens.sum())), 4),
                     tulu_coverage=round(float(covered.sum() / length), 4), shared_ngrams=len(positions),
                     span=render(r["tokens"][a:b]))

    def match(self, prompts: Sequence[Optional[str]], responses: Optional[Sequence[Optional[str]]] = None
              ) -> list[list[Match]]:
        """Per training row, every item it shares an n-gram with: prompts against the items' questions,
        responses (when given) against their reference answers. Best coverage first."""
        out: list[list[Match]] = [[] for _ in prompts]
        jobs = [("prompt", "question", prompts)] + ([("response", "answer", responses)] if responses is not None else [])
        for field, part, texts in jobs:
            for (row, item), positions in self._pairs(texts, part).items():
                out[row].append(self._measure(item, positions, field))
        for ms in out:
            ms.sort(key=lambda m: (-m.coverage, -m.tulu_coverage, m.benchmark, m.item_id, m.field))
        return out


def fired(m: Match, rule: str, threshold: float) -> bool:
    """The configured rule's verdict on one match: `coverage` / `tulu` above the threshold (Tulu 3:
    more than 0.5), `any_ngram` one shared n-gram (open-r1)."""
    if rule == "any_ngram":
        return m.shared_ngrams > 0
    return (m.coverage if rule == "coverage" else m.tulu_coverage) > threshold


def semantic_candidates(vectors: np.ndarray, item_vectors: np.ndarray, threshold: float, margin: float = 0.0,
                        chunk: int = 4096) -> list[Optional[tuple[int, float]]]:
    """For each row vector (unit length), its nearest item (cosine) when at least `threshold` and at
    least `margin` above the second-nearest item: the translations and paraphrases n-grams cannot
    see, and not a problem on the same topic as many items (those are near several at once). A
    separate signal, never an n-gram verdict."""
    out: list[Optional[tuple[int, float]]] = []
    if not len(item_vectors):
        return [None] * len(vectors)
    for start in range(0, len(vectors), chunk):
        sims = vectors[start:start + chunk] @ item_vectors.T
        best = sims.argmax(axis=1)
        second = np.partition(sims, -2, axis=1)[:, -2] if sims.shape[1] > 1 else np.full(len(sims), -1.0)
        for i, j in enumerate(best.tolist()):
            s = float(sims[i, j])
            out.append((j, round(s, 4)) if s >= threshold and s - float(second[i]) >= margin else None)
    return out


def iter_batches(table: pa.Table, size: int) -> Iterable[pa.Table]:
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)
