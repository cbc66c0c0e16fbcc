"""`LLMResource`: named models (`generator`, `judge`, ensemble members, ...) and the engines that
serve them, owned by the resource (made once per process on first use, shared between names with
the same engine identity, closed when the run's execution ends)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import yaml
from pydantic import PrivateAttr

from resources.engines import OwnedEngines

from .base import Backend, LLMError
from .cache import LLMCache
from .session import LLMSession, SessionGroup

BACKENDS = ("embedded", "transformers", "vllm", "openai")
DECODING_FIELDS = ("temperature", "top_p", "max_tokens")  # session-level: not part of an engine


class ModelSpec(dg.Config):
    """One named model with the seed's knobs (model_config.yml)."""

    backend: Literal[BACKENDS] = "embedded"
    model: str = ""  # "" = bundled SmolLM2 (embedded); hub id / local folder; served model name (openai)
    revision: Optional[str] = None  # hub revision (transformers, vllm)
    quantization: Optional[str] = None  # embedded: int8 (default) | int8_float32 | int16 | float32; vllm: awq, fp8, ...
    gpu_memory_utilization: Optional[float] = None  # vllm; None = 0.9 split between the distinct vLLM engines
    tensor_parallel_size: int = 1  # vllm
    max_model_len: Optional[int] = None  # vllm; embedded / transformers: truncation guard
    dtype: str = "auto"
    trust_remote_code: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    batch_size: int = 8
    batch_invariant: bool = True  # embedded / transformers: an answer never depends on its batch
    threads: int = 0  # embedded: CPU workers (0 = every core)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai


class LLMResource(dg.ConfigurableResource):
    """Named models (`models: {name: ModelSpec}`) and/or a YAML file with the same shape
    (`config_file`, the seed's model_config.yml knobs). A name not configured anywhere gets the
    default spec (embedded SmolLM2). `api_key` for openai backends: `dg.EnvVar("LLM_API_KEY")`.
    Assets use `llm.session(context, name, storage=storage)`, never a backend."""

    models: dict[str, ModelSpec] = {}
    config_file: str = ""
    api_key: Optional[str] = None
    max_concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 3
    cache_dir: str = ""  # "" = <storage root>/_llm_cache (local) or ~/.cache/posttrain/llm_cache
    max_failure_rate: float = 0.2  # a partition fails when more of its requests fail

    _engines: OwnedEngines = PrivateAttr(default_factory=OwnedEngines)

    # ------------------------------------------------------------------ specs
    def _file_models(self) -> dict:
        if not self.config_file:
            return {}
        data = yaml.safe_load(Path(self.config_file).read_text()) or {}
        return data.get("models") or {}

    def spec(self, name: str) -> ModelSpec:
        if name in self.models:
            return self.models[name]
        entry = self._file_models().get(name)
        return self._file_spec(name, entry) if entry is not None else ModelSpec()

    def _file_spec(self, name: str, entry: dict) -> ModelSpec:
        try:
            return ModelSpec(**entry)
        except ValueError as exc:  # pydantic's ValidationError: the field and the allowed values
            raise LLMError(f"{self.config_file}: model {name!r}: {exc}") from None

    def all_specs(self) -> dict[str, ModelSpec]:
        specs = {k: self._file_spec(k, v) for k, v in self._file_models().items()}
        specs.update(self.models)
        return specs

    @staticmethod
    def engine_key(spec: ModelSpec) -> str:
        """Names whose specs differ only in decoding defaults share one engine."""
        return json.dumps({k: v for k, v in spec.model_dump().items() if k not in DECODING_FIELDS}, sort_keys=True)

    # ------------------------------------------------------------------ engines
    def backend(self, name: str = "generator") -> Backend:
        spec = self.spec(name)
        if spec.backend in ("transformers", "vllm") and not spec.model:
            raise LLMError(f"model {name!r}: backend {spec.backend!r} needs `model`")
        key = self.engine_key(spec)
        if spec.backend == "vllm":
            from .vllm_backend import engine_identity

            key = json.dumps(engine_identity(spec))  # sampling knobs aside, one engine per weights
        return self._engines.get_or_make(key, lambda: self._make(spec))

    def _make(self, spec: ModelSpec) -> Backend:
        if spec.backend == "embedded":
            from .embedded import EmbeddedBackend

            return EmbeddedBackend(spec)
        if spec.backend == "transformers":
            from .hf import HFBackend

            return HFBackend(spec)
        if spec.backend == "vllm":
            from .vllm_backend import VLLMBackend, engine_identity

            distinct = {engine_identity(s) for s in self.all_specs().values() if s.backend == "vllm"} or {None}
            return VLLMBackend(spec, engines_sharing_gpu=len(distinct))
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(spec, self.api_key, self.max_concurrency, self.timeout_s, self.max_retries)

    def close(self) -> None:
        self._engines.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    # ------------------------------------------------------------------ sessions
    def cache_path(self, storage=None) -> str:
        if self.cache_dir:
            return os.path.join(self.cache_dir, "llm_cache.sqlite")
        store = storage.store() if storage is not None else None
        if store is not None and store.is_local:
            return os.path.join(store.base, "_llm_cache", "llm_cache.sqlite")
        return os.path.expanduser("~/.cache/posttrain/llm_cache/llm_cache.sqlite")

    def open_cache(self, storage=None) -> LLMCache:
        return LLMCache(self.cache_path(storage), checkpoint=self.checkpoint)

    def checkpoint(self, unit: str) -> None:
        """Called after each chunk committed to the cache (`resources.faults`): nothing here; a
        crash-recovery test injects a subclass whose checkpoint kills the process at a known point."""

    def session(self, context=None, name: str = "generator", *, storage=None, chunk: int = 16,
                cache: Optional[LLMCache] = None) -> LLMSession:
        """A session on model `name`, logging to the asset's context, caching under the storage
        root (or `cache_dir`). Use as a context manager: the cache closes with it."""
        log = context.log.info if context is not None else None
        owns = cache is None
        cache = cache or self.open_cache(storage)
        return LLMSession(self.backend(name), self.spec(name), cache, name=name, log=log, chunk=chunk,
                          owns_cache=owns)

    def sessions(self, context=None, names=("generator",), *, storage=None, chunk: int = 16) -> SessionGroup:
        """Sessions on several named models (an ensemble) sharing one cache connection."""
        return SessionGroup(self, names, context=context, storage=storage, chunk=chunk)
