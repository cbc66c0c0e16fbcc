"""`RewardResource`: one interface, `score(context, pairs)`, over three backends.

- `judge` (default, CPU): an LLM rates each response 1-5 on UltraFeedback's aspects through an LLM
  session (cached; the `LLMResource` model `judge_model`, the embedded SmolLM2-135M unless
  configured). On the CPU default it is a placeholder, not a reward: 0 of 40 HH-RLHF pairs
  ranked right (bench/reward.py, judge.py).
- `classifier`: a sequence-classification reward model (ArmoRM, Skywork-Reward, ...) with
  transformers or vLLM (GPU).
- `attributes`: the SteerLM attribute model the `attribute_model` asset trained (an artifact under the
  storage root, resources/attributes/): `overall` = the weighted sum of its raw predictions
  (`attribute_weights`, default helpfulness alone), the 9 predictions as aspects. Which artifact:
  `attribute_model` (a version or a folder), else the version the scoring asset passes
  (`score(..., attribute_version=)`: the `version` of attribute_model's latest materialization, an
  upstream of the asset in the graph).

Engines (the classifier, and the LLMResource the judge makes when none is passed) are owned in a
private attribute, made on first use and closed when the step's execution ends."""

from __future__ import annotations

import math
import time
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from resources.attributes import ATTRIBUTES, VERSION_RE, render
from resources.engines import OwnedEngines

from ..reasons import Reason
from .classifier import DTYPES, ENGINES, SCORE_OUTPUTS, HFRewardModel, VLLMRewardModel, render_ids
from .judge import ASPECTS, RATING, judge_row, to_score
from .scores import RewardConfigError, RewardFailure, RewardResults, RewardScore, RewardUnavailable, normalize_pair

BACKENDS = ("judge", "classifier", "attributes")


class RewardResource(dg.ConfigurableResource):
    """Scores (prompt, response) pairs. Defaults work on a CPU machine: the judge on the embedded model.

    `score(context, pairs, llm=..., storage=...)` -> `RewardResults` (a list of `RewardScore` or
    `RewardFailure`, one per pair, plus `.metadata`). Pass the asset's own `LLMResource` as `llm` so the
    judge shares its engines and named models; without one the resource makes its own from
    `llm_config_file` (the LLMResource YAML shape)."""

    backend: str = "judge"  # judge | classifier | attributes
    # --- judge
    judge_model: str = "judge"  # an LLMResource model name (default spec: the embedded SmolLM2-135M)
    aspects: list[str] = list(ASPECTS)  # which of UltraFeedback's aspects the overall score averages
    temperature: Optional[float] = None  # None = the template's (0.0)
    max_tokens: Optional[int] = None  # None = the template's (160)
    seed: int = 0
    chunk: int = 16  # requests per committed cache chunk
    max_prompt_chars: int = 4000  # the conversation keeps its end beyond this (counted as truncated)
    max_response_chars: int = 2000  # the response keeps its beginning beyond this
    llm_config_file: str = ""  # for the LLMResource made here when `score` gets none
    # --- classifier
    model: str = ""  # hub id or folder: RLHFlow/ArmoRM-Llama3-8B-v0.1, Skywork/Skywork-Reward-V2-Llama-3.1-8B, ...
    revision: Optional[str] = None
    dtype: str = "auto"  # auto = bfloat16 on a GPU, float32 on the CPU
    device: str = "auto"  # auto = cuda when present
    engine: str = "transformers"  # transformers | vllm
    max_length: int = 4096  # tokens; longer pairs are cut (truncation_side) and counted as truncated
    truncation_side: str = "left"  # left: the conversation's start goes, the response stays
    batch_size: int = 8
    trust_remote_code: bool = False  # ArmoRM needs true
    score_output: str = "auto"  # auto (.score when the output has one, else logits[:, 0]) | score | logits
    aspect_names: list[str] = []  # names of a multi-objective output's columns (ArmoRM: ARMORM_ATTRIBUTES)
    num_labels: Optional[int] = None  # None = the checkpoint's; 1 to load a causal LM folder as a reward head
    gpu_memory_utilization: float = 0.9  # vllm
    # --- attributes
    # a version (<storage root>/models/attribute_model/<version>) or an artifact folder (path or URI);
    # "" = the version the scoring asset passes: attribute_model's latest materialization
    attribute_model: str = ""
    attribute_weights: dict[str, float] = {"helpfulness": 1.0}  # overall = sum(weight * predicted attribute)

    _engines: OwnedEngines = PrivateAttr(default_factory=OwnedEngines)

    # ------------------------------------------------------------------ config
    def check(self) -> None:
        """Raise `RewardConfigError` with the field and the allowed values when the config cannot work."""
        def bad(field: str, allowed, got) -> RewardConfigError:
            allowed = ", ".join(allowed) if isinstance(allowed, (tuple, list)) else allowed
            return RewardConfigError(f"reward: {field} must be {allowed}, got {got!r}")

        if self.backend not in BACKENDS:
            raise bad("backend", BACKENDS, self.backend)
        if self.backend == "attributes":
            if not self.attribute_weights or any(a not in ATTRIBUTES for a in self.attribute_weights):
                raise bad("attribute_weights", f"a non-empty mapping over {', '.join(ATTRIBUTES)}",
                          self.attribute_weights)
            return
        if self.backend == "judge":
            if not self.aspects or any(a not in ASPECTS for a in self.aspects):
                raise bad("aspects", f"a non-empty subset of {', '.join(ASPECTS)}", self.aspects)
            if len(set(self.aspects)) != len(self.aspects):
                raise bad("aspects", "without repeats", self.aspects)
            if not self.judge_model:
                raise bad("judge_model", "an LLMResource model name", self.judge_model)
            if self.max_tokens is not None and self.max_tokens < 16:
                raise bad("max_tokens", ">= 16 (four ratings and a reason)", self.max_tokens)
            if self.max_prompt_chars < 0 or self.max_response_chars < 0:
                raise bad("max_prompt_chars / max_response_chars", ">= 0 (0 = no limit)",
                          (self.max_prompt_chars, self.max_response_chars))
            return
        if not self.model:
            raise RewardConfigError("reward: backend 'classifier' needs `model` (a hub id or local folder, e.g. "
                                    "RLHFlow/ArmoRM-Llama3-8B-v0.1 with trust_remote_code: true)")
        if self.engine not in ENGINES:
            raise bad("engine", ENGINES, self.engine)
        if self.dtype not in DTYPES:
            raise bad("dtype", DTYPES, self.dtype)
        if self.score_output not in SCORE_OUTPUTS:
            raise bad("score_output", SCORE_OUTPUTS, self.score_output)
        if self.truncation_side not in ("left", "right"):
            raise bad("truncation_side", ("left", "right"), self.truncation_side)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("device", "auto, cpu, cuda or cuda:N", self.device)
        if self.max_length < 8:
            raise bad("max_length", ">= 8 tokens", self.max_length)
        if self.batch_size < 1:
            raise bad("batch_size", ">= 1", self.batch_size)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise bad("gpu_memory_utilization", "in (0, 1]", self.gpu_memory_utilization)

    @property
    def model_name(self) -> str:
        if self.backend == "attributes":
            return f"attributes:{self.attribute_model or 'latest'}"
        if self.backend == "classifier":
            return f"classifier:{self.model}"
        return f"judge:{self.judge_model}"

    # ------------------------------------------------------------------ engines
    def _classifier(self):
        cls = VLLMRewardModel if self.engine == "vllm" else HFRewardModel
        return self._engines.get_or_make("classifier", lambda: cls(self))

    def _own_llm(self):
        from resources.llm import LLMResource

        return self._engines.get_or_make("llm", lambda: LLMResource(config_file=self.llm_config_file))

    def close(self) -> None:
        self._engines.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    # ------------------------------------------------------------------ scoring
    def score(self, context, pairs: list, *, llm=None, storage=None,
              languages: Optional[list[Optional[str]]] = None,
              attribute_version: Optional[str] = None) -> RewardResults:
        """Per pair `(messages or prompt text, response)`: a `RewardScore` (per-aspect values, `overall`,
        the model) or a `RewardFailure` (bad_input, llm_failed, parse_failed, classifier_failed,
        non_finite), never a default score. `languages` (judge): the template language per pair.
        `attribute_version` (attributes, when `attribute_model` is ""): the artifact version to load."""
        self.check()
        pairs = list(pairs)
        if languages is not None and len(languages) != len(pairs):
            raise ValueError(f"languages: {len(languages)} values for {len(pairs)} pairs")
        out: list = [None] * len(pairs)
        valid: list[tuple[int, list[dict], str]] = []
        for i, pair in enumerate(pairs):
            try:
                messages, response = normalize_pair(pair)
                valid.append((i, messages, response))
            except ValueError as exc:
                out[i] = RewardFailure(Reason.BAD_INPUT, f"pair {i}: {exc}", model=self.model_name)
        t0 = time.monotonic()
        if self.backend == "judge":
            meta = self._score_judge(context, valid, out, llm=llm, storage=storage, languages=languages)
        elif self.backend == "attributes":
            meta = self._score_attributes(valid, out, storage, attribute_version)
        else:
            meta = self._score_classifier(context, valid, out)
        res = RewardResults(out)
        seconds = time.monotonic() - t0
        res.metadata = {"reward_backend": self.backend, "reward_model": self.model_name, **meta, **res.counts(),
                        "reward_seconds": round(seconds, 2),
                        "reward_pairs_per_s": round(len(valid) / seconds, 2) if seconds and valid else 0.0}
        if context is not None:
            context.log.info(f"reward {self.model_name}: {res.metadata['reward_scored']}/{len(pairs)} scored, "
                             f"failed {res.metadata['reward_failed_by_reason'] or 0}")
        return res

    def _score_judge(self, context, valid, out, *, llm, storage, languages) -> dict:
        if not valid:
            return {}
        llm = llm if llm is not None else self._own_llm()
        rows = [judge_row(m, r, language=languages[i] if languages else None, max_prompt_chars=self.max_prompt_chars,
                          max_response_chars=self.max_response_chars) for i, m, r in valid]
        with llm.session(context, self.judge_model, storage=storage, chunk=self.chunk) as session:
            results = session.run(RATING, rows, n=1, seed=self.seed, temperature=self.temperature,
                                  max_tokens=self.max_tokens)
            model = session.metadata()["llm_model"]
        for (i, _, _), result in zip(valid, results):
            out[i] = to_score(result, tuple(self.aspects), f"judge:{model}")
        return {**session.metadata(), "reward_model": f"judge:{model}", "reward_template_version": RATING.version,
                "reward_aspects": ", ".join(self.aspects)}

    def attribute_predictor(self, storage=None, embeddings=None, version: Optional[str] = None):
        """The attribute model artifact loaded (once per step) with the embedder it was trained with:
        `attribute_model` (a version or a folder), else `version` (what the scoring asset resolved from
        attribute_model's latest materialization)."""
        from resources.attributes import artifact
        from resources.embeddings import EmbeddingClient
        from resources.storage import ParquetStore, StorageResource

        def make():
            store = (storage or StorageResource()).store()
            folder = self.attribute_model
            if not folder and not version:
                raise RewardConfigError(
                    "reward: backend 'attributes' has no attribute model: the scoring asset passes the version of "
                    f"{artifact.ASSET}'s latest materialization (materialise {artifact.ASSET}), or set "
                    "attribute_model to a version or an artifact folder")
            if not folder:  # the version from the graph: only ever a folder under the storage root
                folder = artifact.artifact_dir(store.base, version)
            elif "://" in folder:
                store, folder = ParquetStore(folder), ParquetStore(folder).base
            elif VERSION_RE.match(folder):  # a version name (no '/'): its folder under the storage root
                folder = artifact.artifact_dir(store.base, folder)
            emb = embeddings or EmbeddingClient()
            return artifact.load(store, folder, embed=emb.encode, embedder_name=emb.model_name, device=self.device)

        return self._engines.get_or_make("attributes", make)

    def _score_attributes(self, valid, out, storage, version) -> dict:
        if not valid:
            return {}
        predictor = self.attribute_predictor(storage, version=version)
        model = f"attributes:{predictor.version}"
        raw = predictor.predict([render(m, r) for _, m, r in valid], [r for _, _, r in valid])
        for (i, _, _), row in zip(valid, raw):
            aspects = {a: float(v) for a, v in zip(ATTRIBUTES, row) if math.isfinite(v)}
            missing = [a for a in self.attribute_weights if a not in aspects]
            if missing:
                out[i] = RewardFailure(Reason.NON_FINITE, f"the attribute model has no head for {', '.join(missing)}",
                                       model=model)
                continue
            overall = sum(w * aspects[a] for a, w in self.attribute_weights.items())
            out[i] = RewardScore(overall=overall, aspects=aspects, model=model, backend="attributes")
        return {"reward_model": model, "reward_attribute_weights": dict(self.attribute_weights)}

    def _score_classifier(self, context, valid, out) -> dict:
        if not valid:
            return {}
        engine = self._classifier()
        model = self.model_name
        rendered = []
        for i, m, r in valid:
            try:
                rendered.append((i, *render_ids(engine.tok, m, r, self.max_length, self.truncation_side)))
            except RewardConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a chat template that refuses this turn order
                out[i] = RewardFailure(Reason.BAD_INPUT, f"pair {i}: chat template: {type(exc).__name__}: {exc}",
                                       model=model)
        values = (engine.scores([ids for _, ids, _ in rendered], batch_size=self.batch_size,
                                score_output=self.score_output) if rendered else [])
        for (i, _, truncated), v in zip(rendered, values):
            if isinstance(v, Exception):
                out[i] = RewardFailure(Reason.CLASSIFIER_FAILED, f"{type(v).__name__}: {v}", model=model)
                continue
            scalar, multi = v
            if not math.isfinite(scalar):
                out[i] = RewardFailure(Reason.NON_FINITE, f"the model returned {scalar}", model=model)
                continue
            aspects = {}
            if self.aspect_names:
                if multi is None or len(multi) != len(self.aspect_names):
                    raise RewardConfigError(
                        f"reward: aspect_names has {len(self.aspect_names)} names but the model's multi-objective "
                        f"output has {0 if multi is None else len(multi)} columns")
                aspects = dict(zip(self.aspect_names, (float(x) for x in multi)))
            out[i] = RewardScore(overall=float(scalar), aspects=aspects, model=model, backend="classifier",
                                 truncated=truncated)
        return {"reward_engine": engine.kind, "reward_max_length": self.max_length}
