"""Backend `classifier`: a sequence-classification reward model (any hub id or local folder:
RLHFlow/ArmoRM-Llama3-8B-v0.1 with `trust_remote_code`, Skywork/Skywork-Reward-*, ...) scoring the
tokenizer's chat template over [prompt turns..., assistant response].

Two engines behind one `scores(items)` call:
- `transformers` (default): `AutoModelForSequenceClassification`, length-sorted right-padded batches
  of `batch_size` (right padding leaves every real token's position and attention as in a batch of one;
  the model pools its last non-pad token), cuda when present.
- `vllm`: `vllm.LLM(runner="pooling")` + `LLM.encode(..., pooling_task="classify")` with the
  activation off (the raw logit, as `logits[:, 0]`); imported only when used (GPU `gpu` extra).

Both read the same token ids: the chat template rendered and tokenised here, cut to `max_length`
tokens (`truncation_side` left by default: the start of the conversation goes, the response and the
template's closing tokens the model reads its reward at stay; the pair is marked `truncated`).

Which output is the score (`score_output`): `auto` takes `.score` when the model's output has one
(ArmoRM's preference score, after its gating layer) and `logits[:, 0]` otherwise (a plain
`AutoModelForSequenceClassification` with one label: Skywork, ...); `score` / `logits` force one.
`aspect_names` names the columns of a multi-objective output (ArmoRM's `.rewards`: `ARMORM_ATTRIBUTES`;
or the logits of a multi-label head) and reports them per pair as `aspects`."""

from __future__ import annotations

from typing import Literal, Optional, get_args

from .scores import RewardConfigError

#: ArmoRM-Llama3-8B-v0.1's 19 reward objectives, in the order of its `.rewards` output (model card)
ARMORM_ATTRIBUTES = (
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability")

#: the classifier's choices: the `classifier` reward config's typed fields (and their values as tuples)
DType = Literal["auto", "float32", "bfloat16", "float16"]
ScoreOutput = Literal["auto", "score", "logits"]
Engine = Literal["transformers", "vllm"]
TruncationSide = Literal["left", "right"]
DTYPES: tuple[str, ...] = get_args(DType)
SCORE_OUTPUTS: tuple[str, ...] = get_args(ScoreOutput)
ENGINES: tuple[str, ...] = get_args(Engine)
TRUNCATION_SIDES: tuple[str, ...] = get_args(TruncationSide)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """`auto`: bfloat16 on a GPU, float32 on the CPU (bf16 matmuls on a CPU are slow and coarse)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def render_ids(tok, messages: list[dict], response: str, max_length: int,
               truncation_side: str = "left") -> tuple[list[int], bool]:
    """The chat template over the prompt turns + the assistant response, tokenised as rendered (the
    template carries its own BOS), cut to `max_length` tokens. -> (token ids, truncated)."""
    if not getattr(tok, "chat_template", None):
        raise RewardConfigError("classifier: the reward model's tokenizer has no chat template "
                                "(the pair is rendered with it)")
    text = tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if max_length and len(ids) > max_length:
        return (ids[-max_length:] if truncation_side == "left" else ids[:max_length]), True
    return ids, False


def extract_scores(output, score_output: str, n: int) -> tuple[list[float], Optional[list[list[float]]]]:
    """(per-row scalar score, per-row multi-objective values or None) from a model output."""
    logits = getattr(output, "logits", None)
    score = getattr(output, "score", None)
    if score_output == "score" or (score_output == "auto" and score is not None):
        if score is None:
            raise RewardConfigError("classifier: score_output 'score' but the model's output has no `.score` "
                                    "(use 'logits' or 'auto')")
        scalar = score.float().reshape(n, -1)[:, 0]
    else:
        if logits is None:
            raise RewardConfigError("classifier: the model's output has no `.logits`")
        scalar = logits.float().reshape(n, -1)[:, 0]
    multi = getattr(output, "rewards", None)
    if multi is None and logits is not None and logits.reshape(n, -1).shape[1] > 1:
        multi = logits
    multi_rows = multi.float().reshape(n, -1).cpu().tolist() if multi is not None else None
    return scalar.cpu().tolist(), multi_rows


class HFRewardModel:
    """`AutoModelForSequenceClassification` + its tokenizer (owned by the RewardResource)."""

    kind = "transformers"

    def __init__(self, cfg):
        """`cfg`: the reward resource's `classifier` backend config (`ClassifierReward`)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        kw = {"trust_remote_code": cfg.trust_remote_code}
        if cfg.revision:
            kw["revision"] = cfg.revision
        self.tok = AutoTokenizer.from_pretrained(cfg.model, **kw)
        if cfg.num_labels:  # e.g. a causal LM folder loaded as a 1-label classifier (its head is new)
            kw["num_labels"] = cfg.num_labels
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, dtype=resolve_dtype(cfg.dtype, self.device), **kw)
        self.model = model.to(self.device).eval()
        if self.tok.pad_token_id is None:  # Llama-style tokenizers: pad with EOS (right padding, masked)
            self.tok.pad_token = self.tok.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.pad_id = self.model.config.pad_token_id
        self._torch = torch

    def settings(self) -> dict:
        return {"engine": "transformers", "model": self.cfg.model, "revision": self.cfg.revision,
                "dtype": str(self.model.dtype), "device": self.device}

    def _forward(self, seqs: list[list[int]], score_output: str):
        torch = self._torch
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return extract_scores(out, score_output, len(seqs))

    def scores(self, seqs: list[list[int]], *, batch_size: int = 8, score_output: str = "auto") -> list:
        """Per sequence (score, multi or None) or an Exception (that item's failure). Length-sorted
        batches; a batch that fails is retried one by one, so one bad item fails alone."""
        out: list = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        bs = max(1, batch_size)
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            try:
                s, m = self._forward([seqs[i] for i in idx], score_output)
                for k, i in enumerate(idx):
                    out[i] = (s[k], m[k] if m is not None else None)
            except RewardConfigError:
                raise
            except Exception:  # noqa: BLE001 - e.g. OOM on a long batch: item by item
                for i in idx:
                    try:
                        s, m = self._forward([seqs[i]], score_output)
                        out[i] = (s[0], m[0] if m is not None else None)
                    except RewardConfigError:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        out[i] = exc
        return out

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- vLLM
def vllm_reward_engine_kwargs(cfg) -> dict:
    """The `vllm.LLM` arguments for a reward model (`cfg`: a `ClassifierReward`): the pooling runner
    (sequence classification), `max_model_len` = `max_length` (we cut the ids ourselves first)."""
    kw = {"model": cfg.model, "runner": "pooling", "dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code,
          "max_model_len": cfg.max_length, "gpu_memory_utilization": cfg.gpu_memory_utilization, "seed": 0}
    if cfg.revision:
        kw["revision"] = cfg.revision
    return kw


def vllm_reward_request(seqs: list[list[int]]) -> tuple[list[dict], dict]:
    """(prompts, `LLM.encode` keyword arguments): token-id prompts, the `classify` pooling task with the
    activation off, so the value is the raw logit (`logits[:, 0]` of the transformers engine)."""
    return [{"prompt_token_ids": list(s)} for s in seqs], {"pooling_task": "classify",
                                                           "pooling_params": {"use_activation": False}}


class VLLMRewardModel:
    kind = "vllm"

    def __init__(self, cfg):
        if cfg.score_output == "score":
            raise RewardConfigError("classifier engine 'vllm' returns the classification head's logits only: "
                                    "score_output 'score' (ArmoRM's `.score`) needs engine 'transformers'")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RewardConfigError(f"classifier engine 'vllm' needs vllm (pip install '.[gpu]' on a GPU "
                                    f"machine): {exc}") from None
        from transformers import AutoTokenizer

        self.cfg = cfg
        kw = {"trust_remote_code": cfg.trust_remote_code, **({"revision": cfg.revision} if cfg.revision else {})}
        self.tok = AutoTokenizer.from_pretrained(cfg.model, **kw)
        self.engine_kwargs = vllm_reward_engine_kwargs(cfg)
        self.llm = LLM(**self.engine_kwargs)

    def settings(self) -> dict:
        return {"engine": "vllm", "model": self.cfg.model, "revision": self.cfg.revision, "dtype": self.cfg.dtype}

    def scores(self, seqs: list[list[int]], *, batch_size: int = 0, score_output: str = "auto") -> list:
        """vLLM batches by itself (`batch_size` is not used); the head's logits only (no `.score`)."""
        from vllm import PoolingParams

        prompts, kw = vllm_reward_request(seqs)
        kw["pooling_params"] = PoolingParams(**kw["pooling_params"])
        out = []
        for r in self.llm.encode(prompts, use_tqdm=False, **kw):
            data = r.outputs.data.float().reshape(-1).cpu().tolist()
            out.append((data[0], data if len(data) > 1 else None))
        return out

    def close(self) -> None:
        self.llm = None
