"""Selection stage: `selected_seeds` per source — the seeds for synthesis, chosen by

- `length`: the seed's half-Gaussian selection by answer length (bins from quantiles of a sample,
  weights rising toward the longest bin, per-bin reservoir sampling in one pass);
- `pass_rate`: rows whose pass rate (default `ensemble_acc`) is <= a threshold;
- `difficulty`: `difficulty_z` >= a threshold, or the top-k hardest;

and `hard_problems` per source — the seed's label filter (`--filter-by-pass-rate`) on the pass rates
of our own generations (`solution_pass_rates`): the problems the generator solves at most
`max_pass_rate` of the time. It is a separate asset because `generated_solutions` reads
`selected_seeds` (one asset reading the other's output would be a cycle); both use the same filter
(common.pass_rate).

`filtered_instructions` per source — Magpie's filter over `quality_tags` as a selection method
(tag_filter.py): input quality, instruct reward, no trailing colon, the first of near-duplicates,
optional length / difficulty / safety bounds; every dropped row counted under its first failing rule,
and per rule the share it alone would remove."""

from typing import Literal, Optional, Union

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from partitions import source_partitions
from resources.reasons import Reason
from resources.storage import StorageResource

from ..common.accounting import Accounting, RowIssue, raw_preview, rejects_table
from ..common.choices import choice_enum, plain
from ..common.metadata import accounting_check, stage_metadata
from ..common.pass_rate import filter_by_pass_rate
from .length import answer_lengths, histogram_markdown, length_select, seed_rows
from .tag_filter import (DIFFICULTY_ORDER, QUALITY_LEVELS, RULE_COLUMNS, RULES, FilterRules, apply_filter,
                         per_rule_markdown)

GROUP = "selection"


class LengthSelection(dg.Config):
    """The seed's half-Gaussian selection by answer length."""
    name: Literal["length"] = "length"
    total_samples: int = 100
    num_bins: int = 6
    curve_sharpness: float = 2.0
    sample_size_for_stats: int = 10_000
    length_unit: Literal["chars", "tokens"] = "chars"  # tokens: of `tokenizer` ("" = the embedded SmolLM2)
    tokenizer: str = ""
    seed: int = 42
    shuffle: bool = True


class PassRateSelection(dg.Config):
    """Rows whose pass rate is <= max_pass_rate."""
    name: Literal["pass_rate"] = "pass_rate"
    pass_rate_column: str = "ensemble_acc"
    max_pass_rate: float = 0.5


class DifficultySelection(dg.Config):
    """difficulty_z >= min_difficulty_z (None = 0), or the top_k hardest."""
    name: Literal["difficulty"] = "difficulty"
    min_difficulty_z: Optional[float] = None
    top_k: int = 0  # > 0: the k hardest


class SelectionConfig(dg.Config):
    method: Union[LengthSelection, PassRateSelection, DifficultySelection] = Field(default=LengthSelection(),
                                                                                   discriminator="name")


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="selected_seeds", blocking=True)],
    description="Seeds for synthesis: length (half-Gaussian), pass_rate or difficulty selection.",
)
def selected_seeds(context: dg.AssetExecutionContext, config: SelectionConfig, cot_records: pa.Table,
                   sft_records: pa.Table, difficulty_scores: pa.Table):
    rows = seed_rows(cot_records, sft_records)
    acc = Accounting(rows_in=cot_records.num_rows + sft_records.num_rows)
    m = config.method
    extra: dict = {"method": m.name}
    if m.name == "length":
        lengths = answer_lengths(rows["solution"].to_pylist(), m.length_unit, m.tokenizer)
        idx, report = length_select(lengths, total_samples=m.total_samples, num_bins=m.num_bins,
                                    curve_sharpness=m.curve_sharpness,
                                    sample_size_for_stats=m.sample_size_for_stats, seed=m.seed, shuffle=m.shuffle)
        out = rows.take(pa.array(idx, pa.int64())).append_column("length", pa.array(lengths[idx]))
        # counted from the selector's own per-bin report, not from the table it returns
        acc.removed_by_reason[Reason.NOT_SELECTED] = sum(b["available"] - b["actual"] for b in report["bins"])
        bin_table = ["| bin | length range | available | target | actual |", "|---|---|---|---|---|"]
        bin_table += [f"| {b['bin']} | {b['low']:.0f} – {b['high']:.0f} | {b['available']} | {b['target']} | "
                      f"{b['actual']} |" for b in report["bins"]]
        extra.update(bins=dg.MetadataValue.md("\n".join(bin_table)),
                     length_histogram=dg.MetadataValue.md(histogram_markdown(lengths[idx])),
                     bins_json=dg.MetadataValue.json(report["bins"]))
    else:
        scored = pc.is_in(rows["all_prompt_id"], value_set=difficulty_scores["all_prompt_id"])
        acc.removed_by_reason[Reason.NOT_SCORED] = rows.num_rows - pc.sum(scored).as_py() if rows.num_rows else 0
        joined = rows.join(difficulty_scores.drop_columns(["source"]), "all_prompt_id", join_type="inner")
        if m.name == "pass_rate":
            try:
                out, removed = filter_by_pass_rate(joined, m.max_pass_rate, m.pass_rate_column)
            except ValueError as exc:
                raise dg.Failure(description=f"source {context.partition_key!r}: pass_rate_column: {exc}",
                                 allow_retries=False) from None
            acc.removed_by_reason.update(removed)
        else:  # difficulty (the config's type admits no other method)
            dz = joined["difficulty_z"]
            if m.top_k:
                out = joined.sort_by([("difficulty_z", "descending")]).slice(0, m.top_k)
                acc.removed_by_reason[Reason.BELOW_TOP_K] = max(0, joined.num_rows - m.top_k)
            else:
                threshold = m.min_difficulty_z or 0.0
                out = joined.filter(pc.greater_equal(dz, threshold))
                acc.removed_by_reason[Reason.BELOW_MIN_DIFFICULTY] = pc.sum(pc.less(dz, threshold)).as_py() or 0
                acc.removed_by_reason[Reason.NO_DIFFICULTY] = dz.null_count
        extra["scored_rows"] = joined.num_rows
    acc.rows_out = out.num_rows
    acc.removed_by_reason = +acc.removed_by_reason  # drop zero counts
    yield dg.Output(out, metadata=stage_metadata(out, acc, text_column="prompt",
                                                 preview_columns=["all_prompt_id", "prompt", "answer"], extra=extra))
    yield accounting_check(acc)


class HardProblemsConfig(dg.Config):
    max_pass_rate: float = 0.5  # keep problems solved at most this often (the seed's --filter-by-pass-rate)
    min_n: int = 1  # and with at least this many verdicts (a pass rate over fewer is `too_few_verdicts`)


#: the columns of hard_problems: a prompt table (evolved_instructions can read it) with its pass rate
HARD_COLUMNS = ["all_prompt_id", "source", "language", "kind", "prompt", "gold_answer", "n", "correct", "pass_rate"]


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="hard_problems", blocking=True)],
    description="Problems whose pass rate over our own generations (solution_pass_rates) is <= max_pass_rate.",
)
def hard_problems(context: dg.AssetExecutionContext, config: HardProblemsConfig, solution_pass_rates: pa.Table):
    acc = Accounting(rows_in=solution_pass_rates.num_rows)
    rows = solution_pass_rates
    if rows.num_rows:
        enough = pc.greater_equal(rows["n"], config.min_n)
        # below min_n: a status that says why (not sampled, no gold, failed) or too few verdicts
        for status in rows.filter(pc.invert(enough))["status"].to_pylist():
            acc.removed_by_reason[Reason.TOO_FEW_VERDICTS if status == "ok" else status] += 1
        rows = rows.filter(enough)
    out, removed = filter_by_pass_rate(rows, config.max_pass_rate)
    acc.removed_by_reason.update(removed)
    out = out.select([c for c in HARD_COLUMNS if c in out.column_names])
    acc.rows_out = out.num_rows
    yield dg.Output(out, metadata=stage_metadata(
        out, acc, text_column="prompt", preview_columns=["all_prompt_id", "pass_rate", "n", "prompt"],
        extra={"max_pass_rate": config.max_pass_rate, "min_n": config.min_n}))
    yield accounting_check(acc)


QualityLevel = choice_enum("QualityLevel", QUALITY_LEVELS)
DifficultyLevel = choice_enum("DifficultyLevel", DIFFICULTY_ORDER)


class TagFilterConfig(dg.Config):
    """The seed's (Magpie's) filter over quality_tags (tag_filter.py; rules in a fixed order)."""
    qualities: list[QualityLevel] = ["good", "excellent"]  # keep input_quality in these ([] = rule off)
    min_reward: Optional[float] = None  # keep instruct_reward > this; None = off (the scale depends on the reward backend)
    no_trailing_colon: bool = True  # drop instructions ending in ':' / '：'
    drop_near_duplicates: bool = True  # drop later near-duplicates (min_similar_id set and not the row itself)
    min_length: Optional[int] = None  # characters for ja / zh, words otherwise
    max_length: Optional[int] = None
    min_difficulty: Optional[DifficultyLevel] = None  # very easy | easy | medium | hard | very hard
    max_difficulty: Optional[DifficultyLevel] = None
    safe_only: bool = False  # drop rows whose safety tag is not `safe`


@dg.asset(
    partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec("row_accounting", asset="filtered_instructions", blocking=True)],
    description="quality_tags rows that pass Magpie's filter: input quality, reward, no trailing colon, first of "
                "near-duplicates (+ optional length / difficulty / safety bounds); every drop counted by rule.",
)
def filtered_instructions(context: dg.AssetExecutionContext, config: TagFilterConfig, storage: StorageResource,
                          quality_tags: pa.Table):
    key = context.partition_key
    rules = FilterRules(qualities=tuple(plain(config.qualities)), min_reward=config.min_reward,
                        no_trailing_colon=config.no_trailing_colon, drop_near_duplicates=config.drop_near_duplicates,
                        min_length=config.min_length, max_length=config.max_length,
                        min_difficulty=plain(config.min_difficulty), max_difficulty=plain(config.max_difficulty),
                        safe_only=config.safe_only)
    try:
        res = apply_filter(quality_tags, rules)
    except ValueError as exc:
        raise dg.Failure(description=f"source {key!r}, quality_tags: {exc}", allow_retries=False) from None
    ids = quality_tags["id"].to_pylist() if quality_tags.num_rows else []
    texts = quality_tags["instruction"].to_pylist() if quality_tags.num_rows else []
    issues = [RowIssue(reason=why, source_row=i, source_file="quality_tags", field=RULE_COLUMNS[rule][0],
                       outcome="removed", detail=f"id {ids[i]!r}: rule {rule}", raw=raw_preview(texts[i] or ""))
              for i, rule, why in res.dropped]
    storage.write_rejects(context.asset_key, key, rejects_table(key, "filtered_instructions", issues))
    acc = Accounting.from_issues(quality_tags.num_rows, res.kept.num_rows, issues)
    yield dg.Output(res.kept, metadata=stage_metadata(
        res.kept, acc, text_column="instruction",
        preview_columns=["id", "input_quality", "instruct_reward", "difficulty", "instruction"],
        extra={"rules_active": ", ".join(res.active) or "(none)",
               "rule_order": ", ".join(RULES),
               "per_rule": dg.MetadataValue.json(res.per_rule),
               "per_rule_table": dg.MetadataValue.md(per_rule_markdown(res, quality_tags.num_rows)),
               "rules": dg.MetadataValue.json({**rules.__dict__, "qualities": list(rules.qualities)})}))
    yield accounting_check(acc)
