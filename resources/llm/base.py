"""The one interface every LLM backend implements, and the values that cross it.

A backend answers batches of requests. Each request's answer depends only on the request itself
(its input and its `Decoding`, seed included), never on the batch it came in: the cache key is a
function of the request, so the answer must be too (tested: alone == inside a batch of 8).
Failures are values (`LLMError`), one per failed request or sample, never a lost batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Optional, Union


@dataclass
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = ""


class LLMError(RuntimeError):
    """A request that failed (after retries) or whose answer could not be used."""


class LogprobsUnsupported(LLMError):
    pass


@dataclass(frozen=True)
class Decoding:
    """Every decoding parameter of a request; all of them are in the cache key."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0

    def key(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


Answer = Union[Completion, LLMError]
LogprobAnswer = Union[tuple[float, int], LLMError]


class Backend(ABC):
    """One model engine. `settings()` is its identity for the cache key: what changes its answers
    besides the request (backend, model, revision, dtype, quantization, max_model_len,
    trust_remote_code)."""

    kind: str = ""

    @abstractmethod
    def settings(self) -> dict: ...

    @abstractmethod
    def chat(self, batch: list[list[dict]], decoding: Decoding,
             json_schema: Optional[dict] = None) -> list[list[Answer]]:
        """Per conversation, `decoding.n` answers. With `json_schema` the answer is a JSON object:
        constrained by the engine where it can (vLLM guided decoding, OpenAI `response_format`),
        else prefilled with '{' (see `json_prefill`)."""

    @abstractmethod
    def complete(self, prompts: list[str], decoding: Decoding) -> list[list[Answer]]:
        """Raw text continuation (no chat template)."""

    @abstractmethod
    def avg_logprob(self, prompts: list[str], continuations: list[str]) -> list[LogprobAnswer]:
        """(mean log-probability of the continuation's tokens given the prompt, number of tokens)."""

    @abstractmethod
    def chat_prompt(self, messages: list[dict]) -> str:
        """The text a chat request is rendered to (for teacher forcing after a chat prompt)."""

    def close(self) -> None:
        """Free the engine (memory, threads, GPU)."""


def flat_schema(schema: Optional[dict]) -> bool:
    """A JSON object whose properties hold no object: its first '}' closes it (Magpie's tagger
    stops there)."""
    if not schema or schema.get("type") != "object":
        return False
    for prop in (schema.get("properties") or {}).values():
        t = prop.get("type")
        if t == "object" or (t == "array" and (prop.get("items") or {}).get("type") == "object"):
            return False
    return True


#: how local engines start a JSON-schema answer (part of their settings, so of every cache key)
JSON_PREFILL = "first-required-key"


def json_prefill(decoding: Decoding, schema: Optional[dict]) -> tuple[str, Decoding]:
    """For engines without constrained decoding: the answer starts with '{' and the schema's first
    required property (`{"correct":`), prefilled after the chat prompt; a flat schema stops at the
    first '}' (which is put back). Measured on the embedded 135M model: with '{' alone it writes
    unrelated JSON ({"id": 1, "name": ...}); with the key prefilled its verdicts parse."""
    if schema is None:
        return "", decoding
    required = [k for k in schema.get("required") or [] if k in (schema.get("properties") or {})]
    prefill = "{" + (f'"{required[0]}":' if required and schema.get("type") == "object" else "")
    if flat_schema(schema):
        stop = tuple(dict.fromkeys((*decoding.stop, "}")))
        return prefill, Decoding(**{**decoding.__dict__, "stop": stop})
    return prefill, decoding


def close_prefilled(prefill: str, c: Completion, schema: Optional[dict]) -> Completion:
    if not prefill:
        return c
    text = prefill + c.text
    if flat_schema(schema) and c.finish_reason == "stop" and not text.rstrip().endswith("}"):
        text += "}"
    return Completion(text, c.tokens_in, c.tokens_out, c.finish_reason)


class LocalBackend(Backend):
    """A backend that renders the chat template itself (`self.tok`) and generates from text
    (`_generate(texts, decoding)`): embedded and transformers. JSON-schema tasks: '{' prefilled."""

    tok = None

    def _generate(self, texts: list[str], decoding: Decoding) -> list[list[Answer]]:
        raise NotImplementedError

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def chat(self, batch, decoding, json_schema=None):
        prefill, d = json_prefill(decoding, json_schema)
        out = self._generate([self.chat_prompt(m) + prefill for m in batch], d)
        return [[close_prefilled(prefill, c, json_schema) if isinstance(c, Completion) else c for c in per]
                for per in out]

    def complete(self, prompts, decoding):
        return self._generate(list(prompts), decoding)
