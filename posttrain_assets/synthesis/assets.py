"""Synthesis stage (per source): `generated_solutions` + `solution_pass_rates` (generate-from-seed
with an LLM filter; solutions.py) and `evolved_instructions` — Evol-Instruct (WizardLM) over a prompt table
(`selected_seeds` by default, or `deduplicated_prompts`): a chain of evolution operations (width,
depth with a seeded method per prompt, flatten) for a number of rounds, WizardLM's elimination rules
(language-aware), the seed's judge and the generator's answer; one conversation row per lineage and
round that passes (evolution.py); `preference_pairs` — n candidate responses per prompt of any prompt table
(models x temperatures), every one scored by the `reward` resource, best vs worst as a chosen / rejected
pair (pairs.py)."""

from collections import Counter
from typing import Literal, Optional

import dagster as dg
import pyarrow as pa

from partitions import source_partitions
from resources.llm import LLMResource
from resources.reasons import Reason
from resources.reward import RewardConfigError, RewardResource
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common import asset_names as A
from ..common.accounting import Accounting, rejects_table
from ..common.choices import choice_enum
from ..common.metadata import (REWARD_DEPS, accounting_check, all_rejected_metadata, attribute_model_version,
                               model_asset, read_input_partition, stage_metadata, unique_check)
from ..common.pools import GPU_POOL
from ..common.sizing import auto, resolve_sizes
from ..common.stages import NOT_IN_MODEL_STAGES, source_skipped, stage_items
from .evolution import INPUTS as EVOL_INPUTS
from .evolution import (DEPTH_METHODS, OPERATIONS, OUTPUT_SCHEMA, funnel_markdown, input_items, language_markdown,
                        parse_chain, rendered_markdown, run_evolution, sample_items)
from .pairs import INPUTS as PAIR_INPUTS
from .pairs import (CANDIDATE_STATUSES, RESPONSE, generation_settings, margin_histogram, prompt_items,
                    request_failures, reward_answer_failures)
from .pairs import assemble as assemble_pairs
from .pairs import funnel_markdown as pairs_funnel_markdown
from .pairs import generate as generate_candidates
from .pairs import histogram_markdown as margin_markdown
from .pairs import score as score_candidates
from .solutions import (ANSWER_KINDS, FUNNEL, assemble, generate, histogram_markdown, judge,
                        pass_rate_histogram, problems_from_records, problems_from_seeds, sample_problems, to_judge)
from .solutions import funnel_markdown as solution_funnel_markdown
from .tasks import ANSWER, EQUAL, EVOLVE, JUDGE

GROUP = "synthesis"


EvolOperation = choice_enum("EvolOperation", OPERATIONS)
DepthMethod = choice_enum("DepthMethod", DEPTH_METHODS)


class EvolConfig(dg.Config):
    # the prompt table (all of evolution.INPUTS are lineage deps)
    input_asset: Literal[EVOL_INPUTS] = A.SELECTED_SEEDS
    chain: list[EvolOperation] = ["width", "depth", "flatten"]  # operations per round: width | depth | flatten
    rounds: int = 2
    depth_methods: list[DepthMethod] = list(DEPTH_METHODS)  # drawn per prompt, round and step (seeded)
    generator: str = "generator"  # LLMResource model names: evolutions + answers
    judge: str = "judge"  # equality judge (rule 1) + the seed's quality judge
    max_prompts: Optional[int] = auto(2, 0, "evolve at most this many input rows (a seeded sample; 0 = all)")
    max_input_chars: Optional[int] = auto(1500, 4000, "longer prompts are removed (counted)")
    evolve_temperature: float = 0.7
    evolve_max_tokens: Optional[int] = auto(64, 256, "new tokens per evolution")
    judge_max_tokens: Optional[int] = auto(48, 128, "new tokens per verdict (judges: greedy unless the judge "
                                                    "model's spec says otherwise)")
    answer_temperature: float = 0.0
    answer_max_tokens: Optional[int] = auto(96, 512, "new tokens per answer to an evolved instruction")
    refusal_max_words: int = 80  # rule 2: a refusal under this many words (WizardLM) ...
    refusal_max_chars: int = 200  # ... or characters for ja / zh
    chunk: int = 8  # prompts per committed cache chunk
    seed: int = 0


@model_asset(
    "evolved_instructions", group=GROUP, unique="id", deps=EVOL_INPUTS,
    description="Evol-Instruct (width / depth / flatten, elimination, judge, answer) over a source's prompts: "
                "conversation rows with lineage.")
def evolved_instructions(context: dg.AssetExecutionContext, config: EvolConfig, llm: LLMResource,
                         registry: SourceRegistryResource, storage: StorageResource):
    key = context.partition_key
    config = resolve_sizes(config, llm, [config.generator, config.judge], context.log.info)
    source_table = read_input_partition(storage, config.input_asset, key, EVOL_INPUTS)
    try:
        parse_chain(config.chain)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if config.rounds < 1:
        raise dg.Failure(description=f"rounds must be >= 1, got {config.rounds}", allow_retries=False)
    rows_in = source_table.num_rows
    try:
        items, dropped = input_items(source_table, key, config.max_input_chars, config.input_asset)
    except ValueError as exc:
        raise dg.Failure(description=f"source {key!r}, {config.input_asset}: {exc}", allow_retries=False) from None
    sampled, removed = stage_items(items, source_skipped(registry, key, GROUP, context.log.info),
                                   lambda xs: sample_items(xs, config.max_prompts, config.seed))

    llm_md: dict = {}
    extra: dict = {}
    if sampled:  # no model is loaded for an empty partition
        with llm.sessions(context, [config.generator, config.judge], storage=storage, chunk=config.chunk) as sessions:
            res = run_evolution(sampled, sessions.get(config.generator), sessions.get(config.judge), config)
        llm_md = sessions.metadata()
        table, issues, with_output = res.table, res.issues, res.inputs_with_output
        if res.requests and res.generation_errors / res.requests > llm.max_failure_rate:
            raise dg.Failure(description=f"source {key!r}: {res.generation_errors}/{res.requests} model requests failed "
                                         f"(> max_failure_rate {llm.max_failure_rate:.0%})", allow_retries=True)
        extra = {
            "funnel": dg.MetadataValue.md(funnel_markdown(res.funnel)),
            "funnel_json": dg.MetadataValue.json(res.funnel),
            "eliminated_by_rule": dg.MetadataValue.json(res.eliminated),
            "acceptance_by_language": dg.MetadataValue.md(language_markdown(res.by_language)),
            "acceptance_by_language_json": dg.MetadataValue.json(res.by_language),
            "depth_methods": dg.MetadataValue.json(res.depth_methods),
            "messages_sent": dg.MetadataValue.md(rendered_markdown(res.rendered)),
            "generation_errors": res.generation_errors,
        }
    else:
        table, issues, with_output = OUTPUT_SCHEMA.empty_table(), [], 0

    storage.write_rejects(context.asset_key, key, rejects_table(key, "evolved_instructions", dropped + issues))
    # per input row: one or more output rows, or the reason of its last failure
    acc = Accounting.from_issues(rows_in, with_output, dropped + issues)
    acc.removed_by_reason.update(removed)
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, text_column="input", preview_columns=["id", "language", "evolution_path", "input", "output"],
        extra={**llm_md, **extra, "output_rows": table.num_rows, "inputs_with_output": with_output,
               "input_asset": config.input_asset, "chain": ">".join(config.chain), "rounds": config.rounds,
               "template_versions": dg.MetadataValue.json(
                   {t.name: t.version for t in (*EVOLVE.values(), EQUAL, JUDGE, ANSWER)}),
               # "all rejected" judged over the prompts the stage evolved (a max_prompts sample is no failure)
               **all_rejected_metadata(context, key, Accounting.from_issues(len(sampled), with_output, issues),
                                       issues)}))
    yield accounting_check(acc)
    yield unique_check(table, "id")

class SolutionsConfig(dg.Config):
    input: Literal["selected_seeds", "records"] = A.SELECTED_SEEDS  # records: cot_records + sft_records
    answer_kind: Literal[ANSWER_KINDS] = "auto"  # auto (math: a short gold math-verify reads, or a CoT record) | math | free
    generator: str = "generator"  # the LLMResource model names
    judge: str = "judge"
    n: Optional[int] = auto(2, 4, "solutions per problem")
    temperature: float = 0.7
    max_tokens: Optional[int] = auto(128, 512, "new tokens per solution")
    seed: int = 0
    judge_math: bool = False  # also judge the math answers math-verify decided (disagreements counted)
    judge_max_tokens: Optional[int] = auto(48, 128, "new tokens per verdict")
    # the 135M judge writes an unparseable verdict for about a third of free-form answers (counted
    # judge_failed rejects, never accepted): on the embedded engine that many are allowed
    max_judge_failure_rate: Optional[float] = auto(0.75, 0.2, "unparseable deciding verdicts above this share "
                                                              "fail the step")
    judge_max_chars: Optional[int] = auto(1000, 2000, "question / gold / response (its end) cut to this for the judge")
    max_input_chars: Optional[int] = auto(1500, 4000, "OOM guard for the problem text")
    keep: Literal["correct", "all"] = "correct"  # all: incorrect solutions kept too, e.g. for preference pairs)
    max_pass_rate: Optional[float] = None  # the seed's label filter on our own generations (<= kept)
    max_problems: Optional[int] = auto(3, 0, "a deterministic sample of the problems (0 = all); the rest: "
                                             "status not_sampled")
    chunk: int = 8  # problems per committed cache chunk


def _llm_metadata(sessions: list) -> dict:
    """The sessions' figures added up (generator + judge), and per model."""
    total: Counter = Counter()
    seconds = 0.0
    for s in sessions:
        for k, v in s.stats.as_metadata().items():
            if k != "llm_tokens_per_s":
                total[k] += v
        seconds += s.stats.seconds
    md = {k: total.get(k, 0) for k in ("llm_requests", "llm_calls", "llm_cache_hits", "llm_failures",
                                        "llm_parse_failures", "llm_tokens_in", "llm_tokens_out")}
    md["llm_tokens_per_s"] = round(md["llm_tokens_out"] / seconds, 1) if seconds else 0.0
    md["llm_model"] = ", ".join(sorted({s.metadata()["llm_model"] for s in sessions}))
    md["llm_by_role"] = dg.MetadataValue.json({role: s.metadata() for role, s in zip(("generator", "judge"), sessions)})
    return md


@dg.multi_asset(
    partitions_def=source_partitions, group_name=GROUP, pool=GPU_POOL,
    outs={"generated_solutions": dg.AssetOut(kinds={"parquet", "pytorch"},
                                             description="One row per kept generated solution, verified against the gold."),
          "solution_pass_rates": dg.AssetOut(kinds={"parquet"},
                                             description="Per problem: n, correct, pass_rate = correct / n, kept.")},
    ins={"selected_seeds": dg.AssetIn(), "cot_records": dg.AssetIn(), "sft_records": dg.AssetIn()},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="generated_solutions", blocking=True),
                 dg.AssetCheckSpec("row_accounting", asset="solution_pass_rates", blocking=True),
                 dg.AssetCheckSpec("all_prompt_id_unique", asset="solution_pass_rates")],
)
def generated_solutions(context: dg.AssetExecutionContext, config: SolutionsConfig, llm: LLMResource,
                        registry: SourceRegistryResource, storage: StorageResource, selected_seeds: pa.Table,
                        cot_records: pa.Table, sft_records: pa.Table):
    key = context.partition_key
    config = resolve_sizes(config, llm, [config.generator, config.judge], context.log.info)
    if config.input == A.SELECTED_SEEDS:
        loaded = problems_from_seeds(selected_seeds, config.answer_kind)
    else:  # records
        loaded = problems_from_records(cot_records, sft_records, config.answer_kind)
    with_gold = [p for p in loaded if p["gold"]]
    skipped = [(p, Reason.NO_GOLD_ANSWER) for p in loaded if not p["gold"]]
    if source_skipped(registry, key, GROUP, context.log.info):  # one pass-rate row each, n = 0
        problems, skipped = [], skipped + [(p, NOT_IN_MODEL_STAGES) for p in with_gold]
    else:
        problems, not_sampled = sample_problems(with_gold, config.max_problems, config.seed)
        skipped += [(p, Reason.NOT_SAMPLED) for p in not_sampled]

    sessions, samples, gen_model, judge_model, gen_s = [], [], "", "", 0.0
    if problems:  # no model is loaded for an empty partition
        with llm.session(context, config.generator, storage=storage, chunk=config.chunk) as gen:
            samples = generate(problems, gen, n=config.n, temperature=config.temperature,
                               max_tokens=config.max_tokens, seed=config.seed, max_input_chars=config.max_input_chars)
        sessions.append(gen)
        gen_model, gen_s = gen.metadata()["llm_model"], gen.stats.seconds
        judged = to_judge(samples, config.judge_math)
        if judged:  # the judge is loaded only when some answer needs it
            with llm.session(context, config.judge, storage=storage, chunk=config.chunk) as jdg:
                judge(judged, jdg, max_chars=config.judge_max_chars, max_tokens=config.judge_max_tokens)
            sessions.append(jdg)
            judge_model = jdg.metadata()["llm_model"]
    res = assemble(problems, samples, n=config.n, keep=config.keep, max_pass_rate=config.max_pass_rate,
                   generator_model=gen_model, judge_model=judge_model, skipped=skipped)
    res.counts["problems_loaded"] = len(loaded)

    sol_key = dg.AssetKey("generated_solutions")
    storage.write_rejects(sol_key, key, rejects_table(key, "generated_solutions", res.issues))
    # generation failures against the LLM resource's max_failure_rate; unparseable deciding verdicts
    # against max_judge_failure_rate (a weak judge, e.g. the CPU default, can be allowed more)
    requested = max(res.counts["requested"], 1)
    for reason, limit, knob in (("llm_failed", llm.max_failure_rate, "max_failure_rate"),
                                ("judge_failed", config.max_judge_failure_rate, "max_judge_failure_rate")):
        failed = [i for i in res.issues if i.reason == reason]
        if len(failed) / requested > limit:
            storage.publish_rejects(sol_key, key)  # the rejects say which failed and why
            raise dg.Failure(description=f"source {key!r}: {len(failed)}/{res.counts['requested']} solutions failed "
                                         f"({len(failed) / requested:.0%} > {knob} {limit:.0%}); first: "
                                         f"{failed[0].reason}: {failed[0].detail}", allow_retries=reason == Reason.LLM_FAILED)

    # accounting: solutions (requested = problems asked x n) and problems (every problem loaded)
    sol_acc = Accounting.from_issues(res.counts["requested"], res.solutions.num_rows, res.issues)
    prob_acc = Accounting(rows_in=len(loaded), rows_out=res.pass_rates.num_rows)
    hist = pass_rate_histogram(res.pass_rates["pass_rate"].to_pylist())
    llm_md = _llm_metadata(sessions) if sessions else {}
    common = {**llm_md, "funnel": dg.MetadataValue.md(solution_funnel_markdown(res.counts, FUNNEL)),
              "funnel_json": dg.MetadataValue.json(dict(res.counts)),
              "judge_disagreements": res.counts["judge_disagreements"],
              "judge_failures": res.counts["judge_failures"],
              "generations_per_s": round(res.counts["generated"] / gen_s, 2) if gen_s else 0.0,
              "n": config.n, "generator": config.generator, "judge": config.judge}
    yield dg.Output(res.solutions, output_name="generated_solutions", metadata=stage_metadata(
        res.solutions, sol_acc, text_column="solution",
        preview_columns=["all_prompt_id", "sample", "final_answer", "gold_answer", "correct", "verifier"],
        extra={**common, **all_rejected_metadata(context, key, sol_acc, res.issues)}))
    yield dg.Output(res.pass_rates, output_name="solution_pass_rates", metadata=stage_metadata(
        res.pass_rates, prob_acc, preview_columns=["all_prompt_id", "status", "n", "correct", "pass_rate", "kept"],
        extra={**common, "pass_rate_histogram": dg.MetadataValue.md(histogram_markdown(hist)),
               "pass_rate_histogram_json": dg.MetadataValue.json(hist)}))
    yield _check_for(accounting_check(sol_acc), sol_key)
    yield _check_for(accounting_check(prob_acc), dg.AssetKey("solution_pass_rates"))
    yield _check_for(unique_check(res.pass_rates, "all_prompt_id"), dg.AssetKey("solution_pass_rates"))


def _check_for(check: dg.AssetCheckResult, asset_key: dg.AssetKey) -> dg.AssetCheckResult:
    """A shared check builder's result, addressed to one output of the multi-asset."""
    return dg.AssetCheckResult(check_name=check.check_name, passed=check.passed, severity=check.severity,
                               metadata=check.metadata, description=check.description, asset_key=asset_key)


class PairsConfig(dg.Config):
    # any prompt table of the source (all are lineage deps)
    input_asset: Literal[PAIR_INPUTS] = A.FILTERED_INSTRUCTIONS
    models: list[str] = ["generator"]  # LLMResource model names; each answers at every temperature
    temperatures: list[float] = [0.0, 1.0]  # 0 = greedy: one sample (more would be copies)
    samples_per_setting: int = 2  # samples per (model, sampled temperature)
    max_tokens: Optional[int] = auto(96, 256, "new tokens per candidate response")
    seed: int = 0
    min_margin: float = 0.0  # best - worst below this: removed (on the reward's own scale; 0 keeps every strict preference)
    drop_truncated: bool = False  # candidates cut at max_tokens: dropped (counted) instead of scored
    max_prompts: Optional[int] = auto(4, 0, "a seeded sample of the prompts (0 = all); the rest: not_sampled")
    max_input_chars: int = 4000  # longer prompt conversations are removed (counted)
    # the 135M judge as the reward parses for about 5 of 12 candidates (docs/demo.md)
    max_reward_failure_rate: Optional[float] = auto(0.9, 0.5, "unusable reward answers (parse_failed, ...) above "
                                                              "this share fail the step")
    chunk: int = 8  # prompts per committed cache chunk


@model_asset(
    "preference_pairs", group=GROUP, unique="id", deps=[*PAIR_INPUTS, *REWARD_DEPS],
    description="On-policy preference pairs: n candidate responses per prompt (models x temperatures), scored "
                "by the reward resource; chosen = best, rejected = worst, with scores, margin and lineage.")
def preference_pairs(context: dg.AssetExecutionContext, config: PairsConfig, llm: LLMResource,
                     reward: RewardResource, registry: SourceRegistryResource, storage: StorageResource):
    key = context.partition_key
    config = resolve_sizes(config, llm, config.models, context.log.info)
    try:
        settings = generation_settings(config.models, config.temperatures, config.samples_per_setting)
        reward.check()
    except (ValueError, RewardConfigError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if config.min_margin < 0:
        raise dg.Failure(description=f"min_margin must be >= 0, got {config.min_margin}", allow_retries=False)
    source_table = read_input_partition(storage, config.input_asset, key, PAIR_INPUTS)
    rows_in = source_table.num_rows
    try:
        items, dropped = prompt_items(source_table, config.input_asset, key, config.max_input_chars)
    except ValueError as exc:
        raise dg.Failure(description=f"source {key!r}: {exc}", allow_retries=False) from None
    sampled, removed = stage_items(items, source_skipped(registry, key, GROUP, context.log.info),
                                   lambda xs: sample_items(xs, config.max_prompts, config.seed))

    llm_md, reward_md = {}, {}
    if sampled:  # no model is loaded for an empty partition
        attribute_version = attribute_model_version(context, reward)
        with llm.sessions(context, config.models, storage=storage, chunk=config.chunk) as group:
            candidates = generate_candidates(sampled, group.sessions, settings, max_tokens=config.max_tokens,
                                             seed=config.seed, drop_truncated=config.drop_truncated)
        llm_md = group.metadata()
        results = score_candidates(sampled, candidates, lambda pairs, languages: reward.score(
            context, pairs, llm=llm, storage=storage, languages=languages, attribute_version=attribute_version))
        reward_md = getattr(results, "metadata", {})
    else:
        candidates = {}
    res = assemble_pairs(sampled, candidates, min_margin=config.min_margin, input_asset=config.input_asset,
                         metadata={"task": f"{RESPONSE.name}@{RESPONSE.version}",
                                   "settings": [vars(s) for s in settings], "max_tokens": config.max_tokens,
                                   "seed": config.seed, "min_margin": config.min_margin})
    res.counts["prompts_in"] = rows_in
    issues = dropped + res.issues
    storage.write_rejects(context.asset_key, key, rejects_table(key, "preference_pairs", issues))
    for (failed, total), limit, knob, retry in (
            (request_failures(res.counts), llm.max_failure_rate, "llm max_failure_rate", True),
            (reward_answer_failures(res.counts), config.max_reward_failure_rate, "max_reward_failure_rate", False)):
        if total and failed / total > limit:
            storage.publish_rejects(context.asset_key, key)  # the rejects say which failed and why
            raise dg.Failure(description=f"source {key!r}: {failed}/{total} {'requests' if retry else 'reward answers'} "
                                         f"failed ({failed / total:.0%} > {knob} {limit:.0%}); see the rejects of "
                                         "preference_pairs", allow_retries=retry)

    acc = Accounting.from_issues(rows_in, res.table.num_rows, issues)
    acc.removed_by_reason.update(removed)
    removed = {**acc.removed_by_reason, **acc.rejected_by_reason}
    hist = margin_histogram(res.margins)
    reward_scalars = {k: v for k, v in reward_md.items() if k.startswith("reward_") and isinstance(v, (int, float, str))}
    reward_llm = {f"reward_{k}": v for k, v in reward_md.items() if k.startswith("llm_")}
    yield dg.Output(res.table, metadata=stage_metadata(
        res.table, acc, text_column="chosen",
        preview_columns=["all_prompt_id", "language", "prompt", "chosen", "rejected", "chosen_score",
                         "rejected_score", "margin"],
        extra={**llm_md, **reward_scalars, **reward_llm,
               "reward_metadata": dg.MetadataValue.json({k: v for k, v in reward_md.items()
                                                         if isinstance(v, (int, float, str, dict, list))}),
               "funnel": dg.MetadataValue.md(pairs_funnel_markdown(res.counts, removed)),
               "funnel_json": dg.MetadataValue.json(dict(res.counts)),
               "margin_histogram": dg.MetadataValue.md(margin_markdown(hist)),
               "margin_histogram_json": dg.MetadataValue.json(hist),
               "candidates_by_outcome": dg.MetadataValue.json({s: res.counts[f"candidates_{s}"]
                                                               for s in CANDIDATE_STATUSES}),
               "reward_failed_by_reason": dg.MetadataValue.json(reward_md.get("reward_failed_by_reason", {})),
               "input_asset": config.input_asset, "models": ", ".join(config.models),
               "temperatures": dg.MetadataValue.json(config.temperatures),
               "candidates_per_prompt": sum(s.n for s in settings), "min_margin": config.min_margin,
               "template_versions": dg.MetadataValue.json({RESPONSE.name: RESPONSE.version}),
               **all_rejected_metadata(context, key, Accounting.from_issues(len(sampled), res.table.num_rows,
                                                                            res.issues), res.issues)}))
    yield accounting_check(acc)
    yield unique_check(res.table, "id")
