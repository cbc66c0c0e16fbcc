"""The `transformers` backend: any local or hub causal LM (cuda when present); the reference the
embedded engine is measured against (bench/README.md).

With `batch_invariant` (default) each request runs alone (greedy: its own generate call; sampled:
`torch.manual_seed(seed)` then `num_return_sequences=n`), so its answer does not depend on the
batch. `batch_invariant: false`: greedy requests in length-sorted, left-padded batches."""

from __future__ import annotations

from .base import Answer, Completion, Decoding, JSON_PREFILL, LLMError, LocalBackend
from .embedded import cut_at_stop

DTYPES = ("auto", "float32", "bfloat16", "float16")


class HFBackend(LocalBackend):
    kind = "transformers"

    def __init__(self, spec):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if spec.dtype not in DTYPES:
            raise LLMError(f"transformers: dtype must be one of {', '.join(DTYPES)}, got {spec.dtype!r}")
        self.spec = spec
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
        kw = {"trust_remote_code": spec.trust_remote_code}
        if spec.revision:
            kw["revision"] = spec.revision
        self.tok = AutoTokenizer.from_pretrained(spec.model, **kw)
        self.model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=dtype, **kw).to(self.device)
        self.model.eval()
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def settings(self) -> dict:
        return {"backend": "transformers", "model": self.spec.model, "revision": self.spec.revision,
                "dtype": self.spec.dtype, "quantization": self.spec.quantization,
                "max_model_len": self.spec.max_model_len, "trust_remote_code": self.spec.trust_remote_code,
                "batch_invariant": self.spec.batch_invariant, "json_prefill": JSON_PREFILL}

    def _encode(self, texts: list[str], padding_side: str):
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                       padding_side=padding_side, truncation=bool(self.spec.max_model_len),
                       max_length=self.spec.max_model_len)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _run(self, texts: list[str], d: Decoding, n: int) -> list[list[Completion]]:
        import torch

        enc = self._encode(texts, "left")
        kw = dict(max_new_tokens=d.max_tokens, pad_token_id=self.pad_id, use_cache=True)
        if d.greedy:
            kw.update(do_sample=False)
        else:
            torch.manual_seed(d.seed)
            kw.update(do_sample=True, temperature=d.temperature, top_p=d.top_p, num_return_sequences=n)
        if d.stop:
            kw.update(stop_strings=list(d.stop), tokenizer=self.tok)
        with torch.no_grad():
            gen = self.model.generate(**enc, **kw)
        width = enc["input_ids"].shape[1]
        per = 1 if d.greedy else n
        out = []
        for i in range(len(texts)):
            answers = []
            for row in range(i * per, (i + 1) * per):
                ids = [t for t in gen[row, width:].tolist() if t != self.pad_id]
                text, stopped = cut_at_stop(self.tok.decode(ids, skip_special_tokens=True), d.stop)
                finish = "stop" if stopped or len(ids) < d.max_tokens else "length"
                answers.append(Completion(text, int(enc["attention_mask"][i].sum()), len(ids), finish))
            out.append(answers * n if d.greedy else answers)
        return out

    def _generate(self, texts: list[str], d: Decoding) -> list[list[Answer]]:
        out: list[list[Answer]] = [[] for _ in texts]
        if d.greedy and not self.spec.batch_invariant:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            bs = max(1, self.spec.batch_size)
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                for i, ans in zip(idx, self._run([texts[i] for i in idx], d, d.n)):
                    out[i] = ans
            return out
        for i, t in enumerate(texts):
            try:
                out[i] = self._run([t], d, d.n)[0]
            except Exception as exc:  # noqa: BLE001 - one request's failure is its own
                out[i] = [LLMError(f"{type(exc).__name__}: {exc}")] * d.n
        return out

    def avg_logprob(self, prompts, continuations):
        import torch

        out: list = [None] * len(prompts)
        bs = max(1, self.spec.batch_size)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            p_ids = [self.tok(prompts[i], add_special_tokens=False)["input_ids"] for i in idx]
            c_ids = [self.tok(continuations[i], add_special_tokens=False)["input_ids"] for i in idx]
            seqs = [a + b for a, b in zip(p_ids, c_ids)]
            if self.spec.max_model_len:
                seqs = [s[: self.spec.max_model_len] for s in seqs]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, s in enumerate(seqs):
                lo, hi = len(p_ids[r]), len(s)
                if hi <= lo or lo == 0:
                    out[idx[r]] = (float("nan"), 0)
                    continue
                target = torch.tensor(s[lo:hi], device=logp.device)
                vals = logp[r, lo - 1:hi - 1].gather(1, target[:, None]).squeeze(1)
                out[idx[r]] = (float(vals.mean()), hi - lo)
        return out

    def close(self) -> None:
        self.model = None
