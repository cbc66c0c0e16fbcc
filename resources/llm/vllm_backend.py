"""The `vllm` backend: the offline `vllm.LLM` engine (GPU; the optional `gpu` extra).

One engine per engine identity (model, revision, dtype, quantization, max_model_len,
trust_remote_code, tensor_parallel_size), owned by the `LLMResource`: two named models on the same
weights (a generator and a judge with other sampling settings) share it. Each engine claims
`gpu_memory_utilization` of the GPU's *total* memory for weights + KV cache; vLLM does not share
that budget between engines, so when it is not set, the resource gives each distinct vLLM engine
0.9 / (number of distinct vLLM engines configured), e.g. 0.45 each for a 7B generator + a 7B judge
on one 80 GB GPU. Set it per model to split unevenly (the sum must stay below ~0.95).

Sampling is per request: vLLM seeds each request's sampler from `SamplingParams.seed`, so a
request's samples do not depend on its batch. JSON-schema tasks use structured outputs
(`StructuredOutputsParams(json=...)`; `GuidedDecodingParams` on vLLM < 0.12)."""

from __future__ import annotations

from typing import Optional

from .base import Backend, Completion, Decoding, LLMError

DEFAULT_GPU_MEMORY = 0.9


def vllm_sampling_kwargs(d: Decoding, json_schema: Optional[dict] = None) -> dict:
    """The `vllm.SamplingParams` arguments we build for a generation request."""
    kw = {"n": d.n, "temperature": d.temperature, "top_p": d.top_p, "max_tokens": d.max_tokens, "seed": d.seed}
    if d.stop:
        kw["stop"] = list(d.stop)
    if json_schema is not None:
        kw["structured_outputs"] = {"json": json_schema}
    return kw


def vllm_engine_kwargs(spec, engines_sharing_gpu: int = 1) -> dict:
    """The `vllm.LLM` constructor arguments for a model spec (`engines_sharing_gpu`: how many
    distinct vLLM engines the resource runs, for the default memory split)."""
    util = spec.gpu_memory_utilization
    if util is None:
        util = round(DEFAULT_GPU_MEMORY / max(1, engines_sharing_gpu), 3)
    kw = {"model": spec.model, "dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code,
          "gpu_memory_utilization": util, "tensor_parallel_size": spec.tensor_parallel_size, "seed": 0}
    for k in ("revision", "quantization", "max_model_len"):
        if getattr(spec, k):
            kw[k] = getattr(spec, k)
    return kw


def engine_identity(spec) -> tuple:
    return ("vllm", spec.model, spec.revision, spec.dtype, spec.quantization, spec.max_model_len,
            spec.trust_remote_code, spec.tensor_parallel_size)


def _sampling_params(kw: dict, **extra):
    from vllm import SamplingParams

    so = kw.pop("structured_outputs", None)
    if so is not None:
        try:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(**so)
        except ImportError:  # vLLM < 0.12
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(**so)
    return SamplingParams(**kw, **extra)


class VLLMBackend(Backend):
    kind = "vllm"

    def __init__(self, spec, engines_sharing_gpu: int = 1):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise LLMError(f"backend 'vllm' needs vllm (pip install '.[gpu]' on a GPU machine): {exc}") from None
        if not spec.model:
            raise LLMError("backend 'vllm' needs `model` (a hub id or local folder)")
        self.spec = spec
        self.engine_kwargs = vllm_engine_kwargs(spec, engines_sharing_gpu)
        self.llm = LLM(**self.engine_kwargs)

    def settings(self) -> dict:
        return {"backend": "vllm", "model": self.spec.model, "revision": self.spec.revision,
                "dtype": self.spec.dtype, "quantization": self.spec.quantization,
                "max_model_len": self.spec.max_model_len, "trust_remote_code": self.spec.trust_remote_code}

    @staticmethod
    def _completions(outputs) -> list[list[Completion]]:
        return [[Completion(o.text, len(r.prompt_token_ids or []), len(o.token_ids), o.finish_reason or "")
                 for o in r.outputs] for r in outputs]

    def chat(self, batch, decoding, json_schema=None):
        params = _sampling_params(vllm_sampling_kwargs(decoding, json_schema))
        return self._completions(self.llm.chat(batch, params, use_tqdm=False))

    def complete(self, prompts, decoding):
        return self._completions(self.llm.generate(list(prompts), _sampling_params(vllm_sampling_kwargs(decoding)),
                                                   use_tqdm=False))

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def avg_logprob(self, prompts, continuations):
        tok = self.llm.get_tokenizer()
        params = _sampling_params(vllm_sampling_kwargs(Decoding(max_tokens=1)), prompt_logprobs=0)
        seqs = [tok(p, add_special_tokens=False)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"]
                for p, c in zip(prompts, continuations)]
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        res = []
        for p, s, r in zip(prompts, seqs, outs):
            lo = len(tok(p, add_special_tokens=False)["input_ids"])
            vals = [d[s[k]].logprob for k, d in enumerate(r.prompt_logprobs) if k >= lo and d]
            res.append((sum(vals) / len(vals), len(vals)) if vals else (float("nan"), 0))
        return res

    def close(self) -> None:
        self.llm = None
