"""Scoring stage: `difficulty_scores` per source over SFT / CoT records with a gold answer.

- `gold_chars`, `prompt_chars`: length of the gold continuation (CoT: the worked solution) and of
  the question, before the OOM guards.
- `avg_logprob` (`gold_tokens`): mean log-probability of the gold after the prompt under the
  primary model.
- `prompt_logprob` (`prompt_tokens`): mean log-probability of the question itself after the chat
  template's user-turn header (how unusual the question reads to the model).
- `label_pass_rate`: the dataset's own pass-rate label (`pass_rate_field` of the record's
  metadata; null when not configured or absent).
- `ensemble_acc`: share of ensemble answers (models x samples) equal to the gold answer (math
  answers compared with math-verify, others by normalised string).
- `irt_beta`: item difficulty of a one-parameter (Rasch) IRT fit over items x respondents.
- `difficulty_z`: weighted mean of the sign-aligned z-scores of these components (hard = high;
  `weights`, defaults chosen on MATH levels, see bench/difficulty_dev.py), per partition; a
  constant component is left out."""

from typing import Optional

import dagster as dg
import pyarrow as pa

from resources.llm import LLMResource
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common.accounting import Accounting, rejects_table
from ..common.metadata import accounting_check, all_rejected_metadata, model_asset, stage_metadata, unique_check
from ..common.sizing import auto, resolve_sizes
from ..common.stages import source_skipped, stage_items
from .difficulty import DEFAULT_WEIGHTS, SCORES_SCHEMA, check_weights, gold_items, sample_items, score_items

GROUP = "scoring"


class DifficultyConfig(dg.Config):
    primary: str = "generator"  # the model whose avg_logprob is used
    ensemble: list[str] = ["generator"]  # respondents: every model x `samples` answers
    samples: int = 2
    temperature: float = 0.7
    max_new_tokens: Optional[int] = auto(64, 256, "new tokens per ensemble answer")
    max_items: Optional[int] = auto(12, 0, "score at most this many items (a deterministic sample; 0 = all)")
    # OOM guards (the seed's): longer prompts / golds are truncated, counted
    max_input_chars: Optional[int] = auto(1500, 4000, "prompts longer than this are truncated (counted)")
    max_gold_chars: Optional[int] = auto(1000, 2000, "golds longer than this are truncated (counted)")
    chunk: int = 8  # prompts per committed cache chunk
    seed: int = 0
    # difficulty_z = weighted mean of the components' z-scores (aligned: higher = harder; lengths on
    # a log scale); a component missing here or with weight 0 is left out, a constant one too.
    # Defaults: chosen on 100 MATH problems vs their human level (bench/difficulty_dev.py).
    weights: dict[str, float] = dict(DEFAULT_WEIGHTS)
    pass_rate_field: str = ""  # key of a pass-rate label in the record's metadata (a number or a list of flags)


@model_asset(
    "difficulty_scores", group=GROUP, unique="all_prompt_id",
    description="Lengths, avg_logprob (gold, question), ensemble_acc, irt_beta, weighted difficulty_z per "
                "SFT / CoT record with a gold answer.")
def difficulty_scores(context: dg.AssetExecutionContext, config: DifficultyConfig, llm: LLMResource,
                      registry: SourceRegistryResource, storage: StorageResource, cot_records: pa.Table,
                      sft_records: pa.Table):
    key = context.partition_key
    config = resolve_sizes(config, llm, [config.primary, *config.ensemble], context.log.info)
    try:
        check_weights(config.weights)  # a typo fails the run before a model loads
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    rows_in = cot_records.num_rows + sft_records.num_rows
    available, no_gold = gold_items(cot_records, sft_records, config.pass_rate_field)
    items, removed = stage_items(available, source_skipped(registry, key, GROUP, context.log.info),
                                 lambda xs: sample_items(xs, config.max_items, config.seed))
    llm_md: dict = {}
    if items:  # no model is loaded for an empty partition
        with llm.sessions(context, [config.primary, *config.ensemble], storage=storage,
                          chunk=config.chunk) as sessions:
            table, issues, truncated = score_items(items, sessions, config)
        llm_md = sessions.metadata()
    else:
        table, issues, truncated = SCORES_SCHEMA.empty_table(), [], 0
    storage.write_rejects(context.asset_key, key, rejects_table(key, "difficulty_scores", no_gold + issues))
    acc = Accounting.from_issues(rows_in, table.num_rows, no_gold + issues)
    acc.removed_by_reason.update(removed)
    rate = len(issues) / max(len(items), 1)
    if rate > llm.max_failure_rate:
        storage.publish_rejects(context.asset_key, key)  # the rejects say which failed and why
        raise dg.Failure(description=f"source {key!r}: {len(issues)}/{len(items)} items failed "
                                     f"({rate:.0%} > max_failure_rate {llm.max_failure_rate:.0%}); first: "
                                     f"{issues[0].detail}", allow_retries=True)
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, preview_columns=["all_prompt_id", "gold_chars", "avg_logprob", "ensemble_acc", "difficulty_z"],
        extra={**llm_md, "truncated": truncated, "items_available": len(available),
               **all_rejected_metadata(context, key, acc, no_gold + issues),
               "ensemble": dg.MetadataValue.json(list(config.ensemble)), "samples": config.samples,
               "difficulty_weights": dg.MetadataValue.json(dict(config.weights))}))
    yield accounting_check(acc)
    yield unique_check(table, "all_prompt_id")
