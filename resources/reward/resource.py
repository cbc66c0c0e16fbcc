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
from typing import Literal, Optional, Union

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.attributes import ATTRIBUTES, VERSION_RE, render
from resources.engines import OwnedEngines

from ..reasons import Reason
from .classifier import DType, Engine, HFRewardModel, ScoreOutput, TruncationSide, VLLMRewardModel, render_ids
from .judge import ASPECTS, RATING, judge_row, to_score
from .scores import RewardConfigError, RewardFailure, RewardResults, RewardScore, normalize_pair


class JudgeReward(dg.Config):
    """An LLM rates each response 1-5 on UltraFeedback's aspects (judge.py), through an LLM session."""
    name: Literal["judge"] = "judge"
    judge_model: str = "judge"  # an LLMResource model name (default spec: the embedded SmolLM2-135M)
    aspects: list[str] = list(ASPECTS)  # which of UltraFeedback's aspects the overall score averages
    temperature: Optional[float] = None  # None = the template's (0.0)
    max_tokens: Optional[int] = None  # None = the template's (160)
    seed: int = 0
    chunk: int = 16  # requests per committed cache chunk
    max_prompt_chars: int = 4000  # the conversation keeps its end beyond this (counted as truncated)
    max_response_chars: int = 2000  # the response keeps its beginning beyond this
    llm_config_file: str = ""  # for the LLMResource made here when `score` gets none (the LLMResource YAML shape)


class ClassifierReward(dg.Config):
    """A sequence-classification reward model (classifier.py) with transformers or vLLM."""
    name: Literal["classifier"] = "classifier"
    model: str = ""  # hub id or folder: RLHFlow/ArmoRM-Llama3-8B-v0.1, Skywork/Skywork-Reward-V2-Llama-3.1-8B, ...
    revision: Optional[str] = None
    dtype: DType = "auto"  # auto = bfloat16 on a GPU, float32 on the CPU
    device: str = "auto"  # auto = cuda when present; cpu, cuda, cuda:N
    engine: Engine = "transformers"
    max_length: int = 4096  # tokens; longer pairs are cut (truncation_side) and counted as truncated
    truncation_side: TruncationSide = "left"  # left: the conversation's start goes, the response stays
    batch_size: int = 8
    trust_remote_code: bool = False  # ArmoRM needs true
    score_output: ScoreOutput = "auto"  # auto: .score when the output has one, else logits[:, 0]
    aspect_names: list[str] = []  # names of a multi-objective output's columns (ArmoRM: ARMORM_ATTRIBUTES)
    num_labels: Optional[int] = None  # None = the checkpoint's; 1 to load a causal LM folder as a reward head
    gpu_memory_utilization: float = 0.9  # vllm


class AttributesReward(dg.Config):
    """The SteerLM attribute model artifact (resources/attributes/): overall = the weighted sum of its predictions."""
    name: Literal["attributes"] = "attributes"
    # a version (<storage root>/models/attribute_model/<version>) or an artifact folder (path or URI);
    # "" = the version the scoring asset passes: attribute_model's latest materialization
    attribute_model: str = ""
    attribute_weights: dict[str, float] = {"helpfulness": 1.0}  # overall = sum(weight * predicted attribute)
    device: str = "auto"  # the artifact's model (a LoRA backbone): auto = cuda when present


#: the reward backends, one config each (the launchpad shows the chosen one's fields)
RewardBackend = Union[JudgeReward, ClassifierReward, AttributesReward]
BACKENDS: tuple[str, ...] = ("judge", "classifier", "attributes")


class RewardResource(dg.ConfigurableResource):
    """Scores (prompt, response) pairs. Defaults work on a CPU machine: the judge on the embedded model.

    `backend`: one of `JudgeReward` (default), `ClassifierReward`, `AttributesReward`; in YAML / the
    launchpad `backend: {classifier: {model: ..., engine: vllm}}`, in Python
    `RewardResource(backend=ClassifierReward(model=...))`.

    `score(context, pairs, llm=..., storage=...)` -> `RewardResults` (a list of `RewardScore` or
    `RewardFailure`, one per pair, plus `.metadata`). Pass the asset's own `LLMResource` as `llm` so the
    judge shares its engines and named models; without one the resource makes its own from the judge's
    `llm_config_file` (the LLMResource YAML shape)."""

    backend: RewardBackend = Field(default=JudgeReward(), discriminator="name")

    _engines: OwnedEngines = PrivateAttr(default_factory=OwnedEngines)

    # ------------------------------------------------------------------ config
    def check(self) -> None:
        """Raise `RewardConfigError` with the field and the allowed values when the config cannot work
        (the choices themselves are typed: Dagster's config validation refuses a bad one)."""
        def bad(field: str, allowed, got) -> RewardConfigError:
            allowed = ", ".join(allowed) if isinstance(allowed, (tuple, list)) else allowed
            return RewardConfigError(f"reward: {field} must be {allowed}, got {got!r}")

        b = self.backend
        if b.name == "attributes":
            if not b.attribute_weights or any(a not in ATTRIBUTES for a in b.attribute_weights):
                raise bad("attribute_weights", f"a non-empty mapping over {', '.join(ATTRIBUTES)}",
                          b.attribute_weights)
            return
        if b.name == "judge":
            if not b.aspects or any(a not in ASPECTS for a in b.aspects):
                raise bad("aspects", f"a non-empty subset of {', '.join(ASPECTS)}", b.aspects)
            if len(set(b.aspects)) != len(b.aspects):
                raise bad("aspects", "without repeats", b.aspects)
            if not b.judge_model:
                raise bad("judge_model", "an LLMResource model name", b.judge_model)
            if b.max_tokens is not None and b.max_tokens < 16:
                raise bad("max_tokens", ">= 16 (four ratings and a reason)", b.max_tokens)
            if b.max_prompt_chars < 0 or b.max_response_chars < 0:
                raise bad("max_prompt_chars / max_response_chars", ">= 0 (0 = no limit)",
                          (b.max_prompt_chars, b.max_response_chars))
            return
        if not b.model:
            raise RewardConfigError("reward: backend 'classifier' needs `model` (a hub id or local folder, e.g. "
                                    "RLHFlow/ArmoRM-Llama3-8B-v0.1 with trust_remote_code: true)")
        if not (b.device == "auto" or b.device == "cpu" or b.device.startswith("cuda")):
            raise bad("device", "auto, cpu, cuda or cuda:N", b.device)
        if b.max_length < 8:
            raise bad("max_length", ">= 8 tokens", b.max_length)
        if b.batch_size < 1:
            raise bad("batch_size", ">= 1", b.batch_size)
        if not 0 < b.gpu_memory_utilization <= 1:
            raise bad("gpu_memory_utilization", "in (0, 1]", b.gpu_memory_utilization)

    @property
    def model_name(self) -> str:
        b = self.backend
        if b.name == "attributes":
            return f"attributes:{b.attribute_model or 'latest'}"
        if b.name == "classifier":
            return f"classifier:{b.model}"
        return f"judge:{b.judge_model}"

    # ------------------------------------------------------------------ engines
    def _classifier(self):
        cls = VLLMRewardModel if self.backend.engine == "vllm" else HFRewardModel
        return self._engines.get_or_make("classifier", lambda: cls(self.backend))

    def _own_llm(self):
        from resources.llm import LLMResource

        return self._engines.get_or_make("llm", lambda: LLMResource(config_file=self.backend.llm_config_file))

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
        if self.backend.name == "judge":
            meta = self._score_judge(context, valid, out, llm=llm, storage=storage, languages=languages)
        elif self.backend.name == "attributes":
            meta = self._score_attributes(valid, out, storage, attribute_version)
        else:
            meta = self._score_classifier(context, valid, out)
        res = RewardResults(out)
        seconds = time.monotonic() - t0
        res.metadata = {"reward_backend": self.backend.name, "reward_model": self.model_name, **meta, **res.counts(),
                        "reward_seconds": round(seconds, 2),
                        "reward_pairs_per_s": round(len(valid) / seconds, 2) if seconds and valid else 0.0}
        if context is not None:
            context.log.info(f"reward {self.model_name}: {res.metadata['reward_scored']}/{len(pairs)} scored, "
                             f"failed {res.metadata['reward_failed_by_reason'] or 0}")
        return res

    def _score_judge(self, context, valid, out, *, llm, storage, languages) -> dict:
        if not valid:
            return {}
        b = self.backend
        llm = llm if llm is not None else self._own_llm()
        rows = [judge_row(m, r, language=languages[i] if languages else None, max_prompt_chars=b.max_prompt_chars,
                          max_response_chars=b.max_response_chars) for i, m, r in valid]
        with llm.session(context, b.judge_model, storage=storage, chunk=b.chunk) as session:
            results = session.run(RATING, rows, n=1, seed=b.seed, temperature=b.temperature,
                                  max_tokens=b.max_tokens)
            model = session.metadata()["llm_model"]
        for (i, _, _), result in zip(valid, results):
            out[i] = to_score(result, tuple(b.aspects), f"judge:{model}")
        return {**session.metadata(), "reward_model": f"judge:{model}", "reward_template_version": RATING.version,
                "reward_aspects": ", ".join(b.aspects)}

    def attribute_predictor(self, storage=None, embeddings=None, version: Optional[str] = None):
        """The attribute model artifact loaded (once per step) with the embedder it was trained with:
        the `attributes` backend's `attribute_model` (a version or a folder), else `version` (what the
        scoring asset resolved from attribute_model's latest materialization)."""
        from resources.attributes import artifact
        from resources.embeddings import EmbeddingClient
        from resources.storage import ParquetStore, StorageResource

        def make():
            store = (storage or StorageResource()).store()
            folder = getattr(self.backend, "attribute_model", "")
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
            return artifact.load(store, folder, embed=emb.encode, embedder_name=emb.model_name,
                                 device=getattr(self.backend, "device", "auto"))

        return self._engines.get_or_make("attributes", make)

    def _score_attributes(self, valid, out, storage, version) -> dict:
        if not valid:
            return {}
        predictor = self.attribute_predictor(storage, version=version)
        weights = self.backend.attribute_weights
        model = f"attributes:{predictor.version}"
        raw = predictor.predict([render(m, r) for _, m, r in valid], [r for _, _, r in valid])
        for (i, _, _), row in zip(valid, raw):
            aspects = {a: float(v) for a, v in zip(ATTRIBUTES, row) if math.isfinite(v)}
            missing = [a for a in weights if a not in aspects]
            if missing:
                out[i] = RewardFailure(Reason.NON_FINITE, f"the attribute model has no head for {', '.join(missing)}",
                                       model=model)
                continue
            overall = sum(w * aspects[a] for a, w in weights.items())
            out[i] = RewardScore(overall=overall, aspects=aspects, model=model, backend="attributes")
        return {"reward_model": model, "reward_attribute_weights": dict(weights)}

    def _score_classifier(self, context, valid, out) -> dict:
        if not valid:
            return {}
        b = self.backend
        engine = self._classifier()
        model = self.model_name
        rendered = []
        for i, m, r in valid:
            try:
                rendered.append((i, *render_ids(engine.tok, m, r, b.max_length, b.truncation_side)))
            except RewardConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a chat template that refuses this turn order
                out[i] = RewardFailure(Reason.BAD_INPUT, f"pair {i}: chat template: {type(exc).__name__}: {exc}",
                                       model=model)
        values = (engine.scores([ids for _, ids, _ in rendered], batch_size=b.batch_size,
                                score_output=b.score_output) if rendered else [])
        for (i, _, truncated), v in zip(rendered, values):
            if isinstance(v, Exception):
                out[i] = RewardFailure(Reason.CLASSIFIER_FAILED, f"{type(v).__name__}: {v}", model=model)
                continue
            scalar, multi = v
            if not math.isfinite(scalar):
                out[i] = RewardFailure(Reason.NON_FINITE, f"the model returned {scalar}", model=model)
                continue
            aspects = {}
            if b.aspect_names:
                if multi is None or len(multi) != len(b.aspect_names):
                    raise RewardConfigError(
                        f"reward: aspect_names has {len(b.aspect_names)} names but the model's multi-objective "
                        f"output has {0 if multi is None else len(multi)} columns")
                aspects = dict(zip(b.aspect_names, (float(x) for x in multi)))
            out[i] = RewardScore(overall=float(scalar), aspects=aspects, model=model, backend="classifier",
                                 truncated=truncated)
        return {"reward_engine": engine.kind, "reward_max_length": b.max_length}
