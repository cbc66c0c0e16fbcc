"""Shards by declaration: one registry entry, many `source` partitions.

A source entry with `shard_rows: R` (or `shards: N`) becomes the partition keys `<key>.s0000`,
`<key>.s0001`, ... Shard i holds the source's rows [i*R, (i+1)*R) in a stable order: the files in
sorted order, the rows of each file in file order (a JSONL row = a non-blank line, a CSV row = a
non-blank record, a Parquet row = a row, a JSON file's rows = its list). With `shards: N`,
R = ceil(rows / N).

Pure functions, no Dagster: counting rows (cheap, cached per file by size + mtime), shard keys,
the per-file pieces one shard reads, and the fingerprint that tells a shard whose file changed.
"""

from __future__ import annotations

from dataclasses import dataclass
import gzip
import hashlib
import json
import os
from pathlib import Path
import re
from typing import Callable

#: Dagster's practical limit of partitions per asset: every shard of every source is one partition
MAX_PARTITIONS = 100_000
#: shard index width: s0000 .. s9999; indices >= 10,000 are written with their own 5 digits (s10000),
#: so a growing source never renames a key it already has
SHARD_WIDTH = 4
SHARD_RE = re.compile(r"^(?P<parent>.+)\.s(?P<index>\d{4,5})$")


class ShardError(ValueError):
    """A shard that cannot be resolved or read as declared."""


@dataclass(frozen=True)
class ShardRange:
    """Shard `index` of source `parent`: rows [start, stop) of the source's rows (stop exclusive)."""

    parent: str
    index: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        return shard_key(self.parent, self.index)

    @property
    def rows(self) -> int:
        return self.stop - self.start


def shard_key(parent: str, index: int) -> str:
    """`gsm8k`, 3 -> `gsm8k.s0003`."""
    return f"{parent}.s{index:0{SHARD_WIDTH}d}"


def parse_shard_key(key: str) -> tuple[str, int] | None:
    """`gsm8k.s0003` -> ('gsm8k', 3); None when `key` is not in the canonical shard form."""
    m = SHARD_RE.match(key)
    if not m:
        return None
    index = int(m.group("index"))
    if shard_key(m.group("parent"), index) != key:  # s00003, s0 ...: not a key we would write
        return None
    return m.group("parent"), index


def looks_like_shard_key(key: str) -> bool:
    return SHARD_RE.match(key) is not None


def shard_size(total_rows: int, shard_rows: int | None, shards: int | None) -> int:
    """Rows per shard: `shard_rows`, or ceil(total / shards) (at least 1)."""
    if shard_rows is not None:
        return shard_rows
    assert shards is not None
    return max(1, -(-total_rows // shards))


def shard_count(total_rows: int, size: int) -> int:
    """Shards of `size` rows over `total_rows` rows (an empty source still has shard 0)."""
    return max(1, -(-total_rows // size))


# ------------------------------------------------------------------------ row counts

_COUNTS: dict[tuple[str, str, int, int], int] = {}


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _count_jsonl(path: Path) -> int:
    n = 0
    with _open(path) as fh:
        for raw in fh:
            if raw.strip():
                n += 1
    return n


def _count_csv(path: Path) -> int:
    import csv
    import io

    with _open(path) as fh:
        text = fh.read().decode("utf-8-sig", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader, None)  # header
    return sum(1 for values in reader if values)


def _count_json(path: Path) -> int:
    with _open(path) as fh:
        text = fh.read().decode("utf-8", "surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines named .json (the loader reads it as such)
            return _count_jsonl(path)
        raise ShardError(f"{path.name}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return len(data)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        return len(lists[0]) if len(lists) == 1 else 0
    return len(data) if isinstance(data, list) else 0


def _count_parquet(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows  # the footer only


COUNTERS = {"jsonl": _count_jsonl, "csv": _count_csv, "json": _count_json, "parquet": _count_parquet}


def count_rows(path: Path, fmt: str) -> int:
    """Rows of one file as the loader numbers them; cached per (path, size, mtime) in this process."""
    st = os.stat(path)
    ck = (str(Path(path).resolve()), fmt, st.st_size, st.st_mtime_ns)
    if ck not in _COUNTS:
        _COUNTS[ck] = COUNTERS[fmt](Path(path))
    return _COUNTS[ck]


def file_pieces(n_files: int, count: Callable[[int], int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(file index, offset, limit) of each file holding rows of [start, stop) of the files'
    concatenated rows; `count(i)` = file i's rows, asked only for the files before the range's end
    and never for the last file (its rows past the range are not needed)."""
    out = []
    base = 0
    for i in range(n_files):
        if base >= stop:
            break
        end = stop if i == n_files - 1 else base + count(i)
        lo, hi = max(start, base), min(stop, end)
        if hi > lo:
            out.append((i, lo - base, hi - lo))
        base = end
    return out


# ------------------------------------------------------------------------ fingerprints


class RowFingerprint:
    """A running hash over the rows a shard reads (raw line bytes for JSONL, the row's values
    otherwise), in order. `prefix_at` = n: also keep the digest after the first n rows, to compare
    with what an earlier materialisation of the shard read (appended rows leave it unchanged)."""

    def __init__(self, prefix_at: int | None = None):
        self._h = hashlib.blake2b(digest_size=16)
        self.rows = 0
        self.prefix_at = prefix_at
        self.prefix: str | None = self._h.hexdigest() if prefix_at == 0 else None

    def add(self, data: bytes) -> None:
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)
        self.rows += 1
        if self.rows == self.prefix_at:
            self.prefix = self._h.hexdigest()

    def add_value(self, value) -> None:
        self.add(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def changed_under_shard(shard: str, files: list[str], before: dict | None, now: RowFingerprint) -> str | None:
    """Why a shard's file changed since the shard was materialised (None when it did not).

    `before`: the earlier materialisation's `shard_rows_read` and `shard_fingerprint`. Rows appended
    after them (a growing last shard) are fine; fewer rows, or different content in the rows read
    before, are not: the shard's earlier output and everything made from it no longer match the file.
    """
    if not before or before.get("shard_fingerprint") is None:
        return None
    n_before = int(before.get("shard_rows_read") or 0)
    where = ", ".join(Path(f).name for f in files) or "its files"
    if now.rows < n_before:
        return (f"shard {shard!r}: {where} changed under the shard: it read {n_before:,} rows when it was "
                f"materialised before, {now.rows:,} now (rows removed or the file replaced)")
    if now.prefix != before["shard_fingerprint"]:
        return (f"shard {shard!r}: {where} changed under the shard: its first {n_before:,} rows differ from "
                f"those materialised before (fingerprint {before['shard_fingerprint']} then, {now.prefix} now; "
                f"rows edited, reordered or inserted before its range)")
    return None
