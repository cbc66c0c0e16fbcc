"""Magpie stage (per source): `magpie_instructions` — instructions an aligned chat model writes from
its pre-query template alone, answered by the same model (Magpie, Xu et al. 2024; generation.py).

Only sources of kind `synthetic` with `generator: magpie` generate: their registry entry holds the
settings (`generator_config`) and a `version`. Every other source gets an empty, typed partition
(accounted 0 = 0, no model loaded). A partition is never silently replaced by rows of other
settings: when the stored partition's settings hash differs from the registry's and `version` was
not changed, the step fails and says what changed (generation.overwrite_problem)."""

import dagster as dg

from partitions.registry import RegistryError
from resources.llm import LLMResource
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from ..common.accounting import Accounting, rejects_table
from ..common.metadata import accounting_check, all_rejected_metadata, model_asset, stage_metadata, unique_check
from .generation import (FUNNEL, RESPONSE, MagpieSettings, empty_table, family_serves, funnel_line,
                         funnel_markdown, generate, overwrite_problem, stored_settings_of_file)

GROUP = "magpie"
ASSET = "magpie_instructions"


class MagpieConfig(dg.Config):
    chunk: int = 8  # requests per committed cache chunk (a killed run loses at most one chunk)


@model_asset(
    ASSET, group=GROUP, unique="uuid",
    description="Magpie: instructions written by the generator model from its pre-query template alone, "
                "rejected / de-duplicated, then answered through the chat path (synthetic sources only).")
def magpie_instructions(context: dg.AssetExecutionContext, config: MagpieConfig, llm: LLMResource,
                        registry: SourceRegistryResource, storage: StorageResource):
    key = context.partition_key
    try:
        spec = registry.get(key)
    except RegistryError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    store = storage.store()
    path = store.path(ASSET, key)
    stored = stored_settings_of_file(path, store.fs) if store.exists(path) else None

    if not spec.synthetic:
        problem = overwrite_problem(key, stored, None)
        if problem:
            raise dg.Failure(description=problem, allow_retries=False)
        table, acc = empty_table(), Accounting(rows_in=0, rows_out=0)
        storage.write_rejects(context.asset_key, key, rejects_table(key, ASSET, []))
        yield dg.Output(table, metadata=stage_metadata(table, acc, extra={
            "synthetic": False, "note": f"source {key!r} is of kind {spec.kind!r}, not synthetic: nothing to generate"}))
        yield accounting_check(acc)
        yield unique_check(table, "uuid")
        return

    cfg = spec.generator_config
    settings = MagpieSettings.from_source(spec, llm.spec(cfg["model"]))
    problem = overwrite_problem(key, stored, settings)
    if problem:
        raise dg.Failure(description=problem, allow_retries=False)
    if stored is not None and stored.settings_hash not in (None, settings.settings_hash):
        context.log.warning(f"source {key!r}: version {stored.version} -> {settings.version}: replacing "
                            f"{stored.rows} rows of settings {stored.settings_hash} with settings {settings.settings_hash}")

    with llm.session(context, cfg["model"], storage=storage, chunk=config.chunk) as session:
        label = session.metadata()["llm_model"]
        served = str(session.settings.get("model") or "")
        if family_serves(cfg["family"], served) is False:
            context.log.warning(f"source {key!r}: pre-query family {cfg['family']!r} does not list the model "
                                f"{served!r}; Magpie needs the model's own chat template (set generator_config.family)")
        res = generate(session, settings, key, model=label, log=context.log.info)
    llm_md = session.metadata()
    if res.requests and res.failures / res.requests > llm.max_failure_rate:
        raise dg.Failure(description=f"source {key!r}: {res.failures}/{res.requests} model requests failed "
                                     f"(> max_failure_rate {llm.max_failure_rate:.0%})", allow_retries=True)

    rejects_uri = storage.write_rejects(context.asset_key, key, rejects_table(key, ASSET, res.issues))
    context.log.info(f"source {key!r}: {funnel_line(res.funnel)}")
    table, acc = res.table, res.accounting
    yield dg.Output(table, metadata=stage_metadata(
        table, acc, text_column="instruction",
        preview_columns=["uuid", "domain", "language", "instruction", "response", "finish_reason"],
        extra={**llm_md, "synthetic": True, "generator": spec.generator,
               "funnel": dg.MetadataValue.md(funnel_markdown(res.funnel)),
               "funnel_json": dg.MetadataValue.json({k: res.funnel[k] for k in FUNNEL}),
               "funnel_line": funnel_line(res.funnel),
               "settings_hash": settings.settings_hash, "version": settings.version,
               "settings": dg.MetadataValue.json(settings.as_dict()),
               "family": cfg["family"], "variant": cfg["variant"] or "", "model_name": cfg["model"],
               "pre_query_template": dg.MetadataValue.md(f"```\n{res.first_prompt}\n```"),
               "response_task": f"{RESPONSE.name} v{RESPONSE.version}",
               "response_system": settings.response_system or "(none: the model's default)",
               "rejects_path": dg.MetadataValue.path(rejects_uri),
               **all_rejected_metadata(context, key, acc, res.issues)}))
    yield accounting_check(acc)
    yield unique_check(table, "uuid")
