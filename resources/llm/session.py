"""`LLMSession`: the only path from an asset to a model. Every call goes through the
content-addressed cache (the session computes the keys from the backend's effective settings,
every decoding parameter and the task's version), counts calls / hits / failures / tokens, logs
progress, and turns a failed request or an unparseable answer into a value, never a crash and
never a placeholder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..reasons import Reason
from .base import Answer, Backend, Completion, Decoding, LLMError, LogprobAnswer
from .cache import CallStats, LLMCache, cached_calls
from .tasks import Task, TaskParseError


@dataclass
class TaskFailure:
    reason: str  # llm_failed | parse_failed
    error: str
    raw: str = ""  # the model's answer, when there was one

    def __str__(self) -> str:
        return f"{self.reason}: {self.error}"


@dataclass
class TaskResult:
    row: dict
    language: str
    messages: list[dict]
    samples: list[Any] = field(default_factory=list)  # per sample: the parsed value or a TaskFailure
    completions: list[Optional[Completion]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[TaskFailure]:
        return [s for s in self.samples if isinstance(s, TaskFailure)]

    @property
    def values(self) -> list[Any]:
        return [s for s in self.samples if not isinstance(s, TaskFailure)]


def _guarded(fn: Callable[[list], list], payloads: list, n: int) -> list:
    """Call the backend for a chunk; when the chunk fails as a whole, retry item by item so one bad
    item becomes one failed row."""
    try:
        return fn(payloads)
    except Exception:  # noqa: BLE001
        out = []
        for p in payloads:
            try:
                out.extend(fn([p]))
            except Exception as exc:  # noqa: BLE001
                out.append([LLMError(f"{type(exc).__name__}: {exc}")] * n)
        return out


class LLMSession:
    def __init__(self, backend: Backend, spec, cache: LLMCache, *, name: str = "generator",
                 log: Optional[Callable[[str], None]] = None, chunk: int = 16, owns_cache: bool = True):
        self.backend, self.spec, self.cache, self.name = backend, spec, cache, name
        self.log, self.chunk, self._owns_cache = log, max(1, chunk), owns_cache
        self.stats = CallStats()
        self.settings = backend.settings()

    # ------------------------------------------------------------------ decoding
    def decoding(self, task: Optional[Task] = None, **overrides) -> Decoding:
        """Effective decoding: the model spec's defaults < the task's defaults < the call's."""
        base = {"temperature": self.spec.temperature, "top_p": self.spec.top_p, "max_tokens": self.spec.max_tokens}
        if task is not None:
            base.update(task.defaults)
        base.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in base:
            base["stop"] = tuple(base["stop"] or ())
        return Decoding(**base)

    # ------------------------------------------------------------------ operations
    def chat(self, conversations: list[list[dict]], *, task: Optional[Task] = None,
             json_schema: Optional[dict] = None, **overrides) -> list[list[Answer]]:
        d = self.decoding(task, **overrides)
        schema = json_schema if json_schema is not None else (task.json_schema if task else None)
        tkey = task.key() if task else ({"json_schema": schema} if schema else None)
        return cached_calls(self.cache, settings=self.settings, op="chat", decoding=d.key(), task=tkey,
                            payloads=conversations, n=d.n, chunk=self.chunk, stats=self.stats, log=self._log,
                            run=lambda ps: _guarded(lambda q: self.backend.chat(q, d, schema), ps, d.n))

    def complete(self, prompts: list[str], **overrides) -> list[list[Answer]]:
        d = self.decoding(None, **overrides)
        return cached_calls(self.cache, settings=self.settings, op="complete", decoding=d.key(), task=None,
                            payloads=list(prompts), n=d.n, chunk=self.chunk, stats=self.stats, log=self._log,
                            run=lambda ps: _guarded(lambda q: self.backend.complete(q, d), ps, d.n))

    def avg_logprob(self, prompts: list[str], continuations: list[str]) -> list[LogprobAnswer]:
        def run(ps):
            return _guarded(lambda q: [[x] for x in self.backend.avg_logprob([a for a, _ in q], [b for _, b in q])],
                            ps, 1)

        out = cached_calls(self.cache, settings=self.settings, op="avg_logprob", decoding={}, task=None,
                           payloads=[[p, c] for p, c in zip(prompts, continuations)], n=1, chunk=self.chunk,
                           stats=self.stats, log=self._log, run=run)
        return [o[0] for o in out]

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.backend.chat_prompt(messages)

    def run(self, task: Task, rows: list[dict], **overrides) -> list[TaskResult]:
        """Render each row in its language, ask the model (n samples), parse every answer."""
        results = [TaskResult(row=r, language=task.language_of(r), messages=task.render(r)) for r in rows]
        answers = self.chat([r.messages for r in results], task=task, **overrides)
        for res, per in zip(results, answers):
            for a in per:
                if isinstance(a, LLMError):
                    res.samples.append(TaskFailure(Reason.LLM_FAILED, str(a)))
                    res.completions.append(None)
                    continue
                res.completions.append(a)
                try:
                    res.samples.append(task.parse(a.text, res.row))
                except TaskParseError as exc:
                    res.samples.append(TaskFailure(Reason.PARSE_FAILED, str(exc), raw=a.text))
                except Exception as exc:  # noqa: BLE001 - a parser bug on one answer is that answer's failure
                    res.samples.append(TaskFailure(Reason.PARSE_FAILED, f"{type(exc).__name__}: {exc}", raw=a.text))
        self.stats.parse_failures += sum(1 for r in results for s in r.samples
                                         if isinstance(s, TaskFailure) and s.reason == Reason.PARSE_FAILED)
        return results

    # ------------------------------------------------------------------ bookkeeping
    def _log(self, msg: str) -> None:
        if self.log:
            self.log(f"[{self.name}] {msg}")

    def metadata(self) -> dict:
        """Per-call figures for an asset's materialisation metadata (no secrets: settings only)."""
        return {**self.stats.as_metadata(), "llm_model": f"{self.settings.get('backend')}:{self.settings.get('model')}"}

    def close(self) -> None:
        if self._owns_cache:
            self.cache.close()

    def __enter__(self) -> "LLMSession":
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SessionGroup:
    """Sessions on several named models sharing one cache connection (an ensemble); `metadata()`
    adds their figures up. A context manager: the cache closes with it."""

    def __init__(self, resource, names, *, context=None, storage=None, chunk: int = 16):
        self.cache = resource.open_cache(storage)
        self.sessions = {n: resource.session(context, n, chunk=chunk, cache=self.cache) for n in dict.fromkeys(names)}

    def get(self, name: str) -> LLMSession:
        return self.sessions[name]

    def metadata(self) -> dict:
        total = CallStats()
        for s in self.sessions.values():
            for k, v in vars(s.stats).items():
                if isinstance(v, (int, float)):
                    setattr(total, k, getattr(total, k) + v)
        models = sorted({f"{s.settings.get('backend')}:{s.settings.get('model')}" for s in self.sessions.values()})
        return {**total.as_metadata(), "llm_model": ", ".join(models)}

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> "SessionGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
