"""Tagging stage (per source): `quality_tags` — Magpie's unitag + gen_dis over any prompt or SFT table
of the source (config `input_asset`): input quality, difficulty (+ intent, knowledge), task
category, safety (Llama Guard 3 when `guard_model` is set, else the tagger as a judge on the same
taxonomy), instruct reward (the `reward` resource), language, and the nearest-neighbour distance /
repeat count / first similar row (tags.py, neighbors.py). One row per taggable input row; a tag
the model fails to produce is null and counted, never a default."""

from typing import Literal, Optional

import dagster as dg

from resources.embeddings import EmbeddingClient
from resources.llm import LLMResource
from resources.reward import RewardResource
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common.accounting import Accounting, rejects_table
from ..common.metadata import (REWARD_DEPS, accounting_check, all_rejected_metadata, attribute_model_version,
                               model_asset, read_input_partition, stage_metadata, unique_check)
from ..common import asset_names as A
from ..common.choices import choice_enum, plain
from ..common.inputs import input_items
from ..common.sizing import auto, resolve_sizes
from ..common.stages import source_skipped, stage_items
from .neighbors import REPEAT_THRESHOLD, SEARCH_SPACE
from .tags import TAG_INPUTS, TAGS, TagSettings, empty_result, funnel_markdown, run_tags
from .tasks import ALL_TASKS

GROUP = "tagging"
ASSET = A.QUALITY_TAGS


TagName = choice_enum("TagName", TAGS)


class QualityTagsConfig(dg.Config):
    input_asset: Literal[TAG_INPUTS] = A.MAGPIE_INSTRUCTIONS
    tagger: str = "judge"  # LLMResource model name of the JSON tags (and of the safety judge)
    tags: list[TagName] = list(TAGS)  # which tags to run (language always runs)
    guard_model: str = ""  # an LLMResource model name serving Llama Guard 3: safety through its format; "" = the tagger judges
    repeat_threshold: float = REPEAT_THRESHOLD  # gen_dis: squared L2 (unit vectors) below which two rows repeat
    search_space: int = SEARCH_SPACE  # gen_dis: neighbours searched per row
    max_tokens: Optional[int] = auto(96, 0, "new tokens per JSON tag answer (0 = each template's default)")
    guard_max_tokens: int = 0  # 0 = the guard template's (16)
    seed: int = 0
    chunk: int = 16  # requests per committed cache chunk


def _failure(msg: str) -> dg.Failure:
    return dg.Failure(description=msg, allow_retries=False)


@model_asset(
    ASSET, group=GROUP, unique="id", deps=[*TAG_INPUTS, *REWARD_DEPS],
    description="Magpie's unitag + gen_dis over a source's prompt or SFT table: quality, difficulty, category, "
                "safety, reward, language, nearest-neighbour distance; failed tags null and counted.")
def quality_tags(context: dg.AssetExecutionContext, config: QualityTagsConfig, llm: LLMResource,
                 reward: RewardResource, embeddings: EmbeddingClient, registry: SourceRegistryResource,
                 storage: StorageResource):
    key = context.partition_key
    config = resolve_sizes(config, llm, [config.tagger, config.guard_model], context.log.info)
    settings = TagSettings(tags=tuple(dict.fromkeys(plain(config.tags))), max_tokens=config.max_tokens or None,
                           guard_max_tokens=config.guard_max_tokens or None, seed=config.seed,
                           repeat_threshold=config.repeat_threshold, search_space=config.search_space)
    try:
        settings.check()
    except ValueError as exc:
        raise _failure(f"source {key!r}: {exc}") from None
    table = read_input_partition(storage, config.input_asset, key, TAG_INPUTS)
    try:
        items, issues = input_items(table, key, config.input_asset, TAG_INPUTS)
    except ValueError as exc:
        raise _failure(str(exc)) from None
    items, removed = stage_items(items, source_skipped(registry, key, GROUP, context.log.info), lambda xs: xs)

    llm_md: dict = {}
    use_guard = "safety" in settings.tags and bool(config.guard_model)
    if items:  # no model is loaded for an empty partition
        attribute_version = attribute_model_version(context, reward)
        use_tagger = bool(set(settings.tags) & {"input_quality", "difficulty", "task_category"}) or \
            ("safety" in settings.tags and not use_guard)
        names = ([config.tagger] if use_tagger else []) + ([config.guard_model] if use_guard else [])
        scored: dict = {}

        def score(pairs, languages):
            out = reward.score(context, pairs, llm=llm, storage=storage, languages=languages,
                               attribute_version=attribute_version)
            scored.update(out.metadata)
            return out

        with llm.sessions(context, names, storage=storage, chunk=config.chunk) as group:
            res = run_tags(items, key, config.input_asset, settings,
                           tagger=group.get(config.tagger) if use_tagger else None,
                           guard=group.get(config.guard_model) if use_guard else None, reward=score,
                           embedder=embeddings, log=context.log.info)
            by_role = {role: group.get(name).metadata() for role, name, used in
                       (("tagger", config.tagger, use_tagger), ("guard", config.guard_model, use_guard)) if used}
            llm_md = group.metadata()
        reward_md = {k if k.startswith("reward_") else f"reward_{k}": v for k, v in scored.items()}
        if "reward_llm_calls" in reward_md:
            by_role["reward"] = {k[len("reward_"):]: v for k, v in reward_md.items() if k.startswith("reward_llm_")}
        for k in ("llm_requests", "llm_calls", "llm_cache_hits", "llm_failures"):
            llm_md[f"{k}_total"] = llm_md.get(k, 0) + reward_md.get(f"reward_{k}", 0)
        llm_md = {**llm_md, **reward_md, "llm_by_role": dg.MetadataValue.json(by_role)}
        if res.requests and res.llm_failed / res.requests > llm.max_failure_rate:
            raise dg.Failure(description=f"source {key!r}: {res.llm_failed}/{res.requests} tagging requests failed "
                                         f"(> max_failure_rate {llm.max_failure_rate:.0%})", allow_retries=True)
    else:
        res = empty_result()
        llm_md = {f"{k}_total": 0 for k in ("llm_requests", "llm_calls", "llm_cache_hits", "llm_failures")}

    rejects_uri = storage.write_rejects(context.asset_key, key, rejects_table(key, ASSET, issues))
    acc = Accounting.from_issues(table.num_rows, res.table.num_rows, issues)
    acc.removed_by_reason.update(removed)
    out = res.table
    yield dg.Output(out, metadata=stage_metadata(
        out, acc, text_column="instruction",
        preview_columns=["id", "language", "input_quality", "difficulty", "task_category", "safety",
                         "instruct_reward", "repeat_count", "instruction"],
        extra={**llm_md, "input_asset": config.input_asset, "tags_run": ", ".join(settings.tags),
               "tagger": config.tagger, "guard_model": config.guard_model or "(none: the tagger judges safety)",
               "distributions": dg.MetadataValue.json(res.distributions()),
               "tag_failures": dg.MetadataValue.json(res.failures),
               "tag_failures_total": sum(sum(c.values()) for c in res.failures.values()),
               "tag_not_applicable": dg.MetadataValue.json(res.not_applicable),
               "funnel": dg.MetadataValue.md(funnel_markdown(acc, res, settings.tags)),
               "template_versions": dg.MetadataValue.json({t.name: t.version for t in ALL_TASKS}),
               "repeat_threshold": config.repeat_threshold, "embedding_model": embeddings.model_name,
               "rejects_path": dg.MetadataValue.path(rejects_uri),
               **all_rejected_metadata(context, key, acc, issues)}))
    yield accounting_check(acc)
    yield unique_check(out, "id")
