"""Content-addressed cache of LLM answers (SQLite, WAL), committed chunk by chunk.

Key = sha256 of (the backend's effective settings, the operation, every decoding parameter, the
task template's name / version / JSON schema, the input, the sample index): `cache_key`. Only the
session (`session.LLMSession`) computes keys; assets never do. A run killed with SIGKILL loses at
most the chunk in flight; the re-run asks the model only for what is not cached. Failed requests
are never cached (they are retried on the next run)."""

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..faults import LLM_CACHE_CHUNK, Checkpoint, no_checkpoint
from .base import Completion, LLMError

log = logging.getLogger(__name__)


def cache_key(settings: dict, op: str, decoding: dict, task: Optional[dict], payload: Any, sample: int) -> str:
    blob = json.dumps({"backend": settings, "op": op, "decoding": decoding, "task": task, "input": payload,
                       "sample": sample}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class LLMCacheError(RuntimeError):
    """The cache file cannot be used (locked by another process past the timeout); names the file."""


class LLMCache:
    """`timeout`: seconds to wait for another process's write lock. A file that is not an SQLite
    database (or a damaged one) is moved aside to `<path>.corrupt-<time>` and a fresh cache started:
    a cache only saves model calls, so losing it costs time, never data (`moved_aside` says where).
    `checkpoint`: called after each chunk `cached_calls` commits (`resources.faults`; default nothing)."""

    def __init__(self, path: str, timeout: float = 60, checkpoint: Checkpoint = no_checkpoint):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.timeout, self.moved_aside, self.checkpoint = path, timeout, None, checkpoint
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise LLMCacheError(f"LLM cache {path}: {exc}") from None
            raise self._locked(exc) from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self.moved_aside = f"{path}.corrupt-{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, self.moved_aside + suffix)
            log.warning(f"LLM cache {path}: {exc}; moved aside to {self.moved_aside}, starting an empty cache")
            self._open()

    def _open(self) -> None:
        self.con = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        try:
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, op TEXT, model TEXT, "
                             "value TEXT, created REAL)")
            self.con.execute("SELECT count(*) FROM answers WHERE key = ''").fetchone()
            self.con.commit()
        except sqlite3.DatabaseError:
            self.con.close()
            raise

    def _locked(self, exc: Exception) -> LLMCacheError:
        return LLMCacheError(f"LLM cache {self.path} is locked by another process (waited {self.timeout:g} s: {exc}); "
                             f"give each concurrent deployment its own cache_dir, or wait for the other run")

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out = {}
        try:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                q = f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(part))})"
                out.update((k, json.loads(v)) for k, v in self.con.execute(q, part))
        except sqlite3.OperationalError as exc:
            raise (self._locked(exc) if "locked" in str(exc) else LLMCacheError(f"LLM cache {self.path}: {exc}")) from None
        return out

    def put_many(self, rows: list[tuple[str, str, str, Any]]) -> None:
        """(key, op, model, value) rows in one transaction."""
        now = time.time()
        try:
            with self.con:
                self.con.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                                     [(k, op, m, json.dumps(v, ensure_ascii=False), now) for k, op, m, v in rows])
        except sqlite3.OperationalError as exc:
            raise (self._locked(exc) if "locked" in str(exc) else LLMCacheError(f"LLM cache {self.path}: {exc}")) from None

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.con.close()


@dataclass
class CallStats:
    requests: int = 0
    cache_hits: int = 0
    calls: int = 0  # requests sent to the model
    failures: int = 0
    parse_failures: int = 0  # answers that came back but did not have the task's shape
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)

    def as_metadata(self) -> dict:
        return {"llm_requests": self.requests, "llm_calls": self.calls, "llm_cache_hits": self.cache_hits,
                "llm_failures": self.failures, "llm_parse_failures": self.parse_failures, "llm_tokens_in": self.tokens_in,
                "llm_tokens_out": self.tokens_out,
                "llm_tokens_per_s": round(self.tokens_out / self.seconds, 1) if self.seconds else 0.0}


def cached_calls(cache: LLMCache, *, settings: dict, op: str, decoding: dict, task: Optional[dict],
                 payloads: list[Any], n: int, run: Callable[[list[Any]], list], chunk: int = 16,
                 stats: Optional[CallStats] = None,
                 log: Optional[Callable[[str], None]] = None) -> list[list[Any]]:
    """Answers for every payload x sample (n per payload): cached ones from the cache, the rest from
    `run` in chunks of `chunk` payloads, each chunk committed before the next. `run(payloads)`
    returns, per payload, a list of n answers (Completion / (avg, tokens) / LLMError)."""
    stats = stats or CallStats()
    keys = [[cache_key(settings, op, decoding, task, p, s) for s in range(n)] for p in payloads]
    model = str(settings.get("model", ""))
    hit = cache.get_many([k for ks in keys for k in ks])
    results: list[list[Any]] = [[None] * n for _ in payloads]
    todo = []
    for i, ks in enumerate(keys):
        for s, k in enumerate(ks):
            if k in hit:
                results[i][s] = _decode(hit[k])
        if any(k not in hit for k in ks):
            todo.append(i)
    stats.requests += len(payloads) * n
    stats.cache_hits += sum(1 for ks in keys for k in ks if k in hit)
    t0 = time.monotonic()
    for c in range(0, len(todo), chunk):
        idx = todo[c:c + chunk]
        t1 = time.monotonic()
        answers = run([payloads[i] for i in idx])
        stats.seconds += time.monotonic() - t1
        rows = []
        for i, per_sample in zip(idx, answers):
            for s, ans in enumerate(per_sample):
                if results[i][s] is not None:
                    continue
                stats.calls += 1
                results[i][s] = ans
                if isinstance(ans, LLMError):
                    stats.failures += 1
                    stats.errors.append(str(ans))
                    continue
                if isinstance(ans, Completion):
                    stats.tokens_in += ans.tokens_in
                    stats.tokens_out += ans.tokens_out
                rows.append((keys[i][s], op, model, _encode(ans)))
        cache.put_many(rows)
        cache.checkpoint(LLM_CACHE_CHUNK)
        if log:
            done = min(c + chunk, len(todo))
            log(f"{op}: {done}/{len(todo)} uncached prompts ({done / max(time.monotonic() - t0, 1e-9):.2f} prompts/s), "
                f"{stats.cache_hits} cache hits")
    return results


def _encode(ans: Any) -> Any:
    if isinstance(ans, Completion):
        return {"completion": [ans.text, ans.tokens_in, ans.tokens_out, ans.finish_reason]}
    return {"value": list(ans) if isinstance(ans, tuple) else ans}


def _decode(v: dict) -> Any:
    if "completion" in v:
        return Completion(*v["completion"])
    value = v["value"]
    return tuple(value) if isinstance(value, list) else value

