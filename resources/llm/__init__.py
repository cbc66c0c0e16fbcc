"""The LLM layer: named models over four backends behind one interface (`base.Backend`), sessions
that are the only path to a model and always go through the content-addressed cache, and tasks
(template data + answer parser).

    resource.py        LLMResource (named ModelSpecs, engines owned per process), ModelSpec
    session.py         LLMSession: cached chat / complete / avg_logprob / run(task, rows)
    cache.py           the SQLite answer cache, keys, CallStats
    tasks.py           Task (YAML template per task: version, en/ja/... variants, JSON schema) + parsing
    base.py            Backend interface, Decoding, Completion, LLMError
    embedded.py        CTranslate2 int8 SmolLM2 (bundled, CPU) and the weight conversions
    hf.py              transformers (any hub / local model)
    vllm_backend.py    vLLM offline engine (GPU)
    openai_backend.py  any OpenAI-compatible server
"""

from .base import Backend, Completion, Decoding, LLMError, LogprobsUnsupported
from .cache import CallStats, LLMCache, cache_key
from .embedded import EMBEDDED_NAME, embedded_ct2_dir, embedded_model_dir
from .resource import BACKENDS, LLMResource, ModelSpec
from .session import LLMSession, TaskFailure, TaskResult
from .tasks import Task, TaskParseError, parse_json_answer

__all__ = ["BACKENDS", "Backend", "CallStats", "Completion", "Decoding", "EMBEDDED_NAME", "LLMCache", "LLMError",
           "LLMResource", "LLMSession", "LogprobsUnsupported", "ModelSpec", "Task", "TaskFailure", "TaskParseError",
           "TaskResult", "cache_key", "embedded_ct2_dir", "embedded_model_dir", "parse_json_answer"]
