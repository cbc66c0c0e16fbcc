"""The `openai` backend: any OpenAI-compatible server (`vllm serve`, `transformers serve`,
llama.cpp, a hosted API). Bounded concurrency, timeouts, retries with backoff on connection
errors / timeouts / 429 / 5xx / an answer that is not JSON (tenacity); other failures are one
LLMError per request.

Sample `s` of a request is sent with `seed + s`, so a request's answers do not depend on its batch.
JSON-schema tasks send `response_format: {type: json_schema, ...}`; a server that refuses it
(HTTP 400/422 naming response_format) is asked again without it, remembered, and the answer is
parsed tolerantly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from ..secrets import redact_text, redact_url
from .base import Backend, Completion, Decoding, LLMError, LogprobsUnsupported


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class _NotJSON(LLMError):
    """An HTTP 200 whose body is not JSON (a proxy's error page, a cut connection): retried like a 5xx."""


def safe(fn):
    """Per-request isolation: an exception becomes the item's value (an LLMError), not a crash."""
    def run(job):
        try:
            return fn(job)
        except LLMError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one request's failure must not lose the batch
            return LLMError(f"{type(exc).__name__}: {exc}")
    return run


def request_body(model: str, d: Decoding, sample: int) -> dict:
    """The JSON body fields we send for sample `sample` of a request."""
    b = {"model": model, "temperature": d.temperature, "top_p": d.top_p, "max_tokens": d.max_tokens,
         "seed": d.seed + sample}
    if d.stop:
        b["stop"] = list(d.stop)
    return b


def response_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, spec, api_key: Optional[str], max_concurrency: int, timeout_s: float, max_retries: int):
        self.spec = spec
        self.api_key = api_key
        self.pool = max(1, max_concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.schema_supported = True

    def settings(self) -> dict:
        return {"backend": "openai", "model": self.spec.model, "base_url": redact_url(self.spec.base_url),
                "revision": self.spec.revision, "dtype": self.spec.dtype, "quantization": self.spec.quantization,
                "max_model_len": self.spec.max_model_len, "trust_remote_code": self.spec.trust_remote_code}

    def _post(self, path: str, body: dict) -> dict:
        import requests
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, (requests.ConnectionError, requests.Timeout, _NotJSON)):
                return True
            return isinstance(exc, _HTTPStatus) and (exc.status == 429 or exc.status >= 500)

        @retry(retry=retry_if_exception(transient), stop=stop_after_attempt(self.max_retries),
               wait=wait_exponential(multiplier=0.2, max=5), reraise=True)
        def call():
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            r = requests.post(self.spec.base_url.rstrip("/") + path, json=body, headers=headers,
                              timeout=self.timeout_s)
            if r.status_code != 200:
                raise _HTTPStatus(r.status_code, r.text[:300])
            try:
                return r.json()
            except ValueError:
                raise _NotJSON(f"{path}: answer is not JSON: {r.text[:200]!r}") from None

        try:
            return call()
        except _HTTPStatus as exc:
            err = LLMError(f"{path}: HTTP {exc.status}: {exc.body}")
            err.status = exc.status
            raise err from None
        except requests.RequestException as exc:  # its message holds the URL: credentials redacted
            raise LLMError(f"{path}: {type(exc).__name__}: {redact_text(str(exc), self.spec.base_url)}") from None

    def _map(self, fn, items):
        with ThreadPoolExecutor(self.pool) as ex:
            return list(ex.map(fn, items))

    @staticmethod
    def _completion(choice_text, data) -> Completion:
        usage = data.get("usage") or {}
        return Completion(choice_text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                          (data.get("choices") or [{}])[0].get("finish_reason") or "")

    def _chat_one(self, messages, d: Decoding, s: int, schema: Optional[dict]) -> Completion:
        body = {**request_body(self.spec.model, d, s), "messages": messages}
        if schema is not None and self.schema_supported:
            try:
                data = self._post("/chat/completions", {**body, "response_format": response_format(schema)})
            except LLMError as exc:
                if getattr(exc, "status", 0) in (400, 422) and "response_format" in str(exc):
                    self.schema_supported = False  # this server does not take it: parse tolerantly
                    data = self._post("/chat/completions", body)
                else:
                    raise
        else:
            data = self._post("/chat/completions", body)
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"/chat/completions: unexpected answer {str(data)[:200]!r}") from None
        if not isinstance(text, str):
            raise LLMError(f"/chat/completions: no text in {str(data)[:200]!r}")
        return self._completion(text, data)

    def chat(self, batch, decoding, json_schema=None):
        n = decoding.n
        flat = self._map(safe(lambda job: self._chat_one(job[0], decoding, job[1], json_schema)),
                         [(m, s) for m in batch for s in range(n)])
        return [flat[i * n:(i + 1) * n] for i in range(len(batch))]

    def complete(self, prompts, decoding):
        n = decoding.n

        def one(job):
            prompt, s = job
            data = self._post("/completions", {**request_body(self.spec.model, decoding, s), "prompt": prompt})
            try:
                text = data["choices"][0]["text"]
            except (KeyError, IndexError, TypeError):
                raise LLMError(f"/completions: unexpected answer {str(data)[:200]!r}") from None
            return self._completion(text, data)

        flat = self._map(safe(one), [(p, s) for p in prompts for s in range(n)])
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def chat_prompt(self, messages: list[dict]) -> str:
        raise LogprobsUnsupported("the openai backend scores continuations of raw text prompts; "
                                  "render the chat template client-side")

    def avg_logprob(self, prompts, continuations):
        """Prompt log-probabilities through `/completions` with echo (vLLM serve returns them)."""
        def one(job):
            p, c = job
            data = self._post("/completions", {"model": self.spec.model, "prompt": p + c, "max_tokens": 1,
                                               "temperature": 0.0, "echo": True, "logprobs": 0})
            lp = ((data.get("choices") or [{}])[0] or {}).get("logprobs") or {}
            toks, offs = lp.get("token_logprobs"), lp.get("text_offset")
            if not toks or not offs:
                raise LogprobsUnsupported(
                    f"{redact_url(self.spec.base_url)} returned no prompt logprobs for echo=true (transformers serve "
                    "ignores echo/logprobs; vllm serve supports them)")
            vals = [v for v, o in zip(toks, offs) if o >= len(p) and o < len(p) + len(c) and v is not None]
            return (sum(vals) / len(vals), len(vals)) if vals else (float("nan"), 0)

        return self._map(safe(one), list(zip(prompts, continuations)))
