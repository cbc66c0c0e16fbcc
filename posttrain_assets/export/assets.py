"""Export stage: `hf_parquet` — every source's SFT / CoT / preference records, and the synthetic
tables where they were materialised (`evol` = evolved_instructions in the conversation format,
`generated` = generated_solutions: problem, solution, answer, pass rate; `preference_synthetic` =
preference_pairs in TRL's conversational preference format, a config of its own: see
hf_dataset.preference_synthetic_config for why it is not mixed into `preference`; `steerlm` =
steerlm_sft: both SteerLM training formats with the predicted label string and the model version), as a Hugging Face Parquet
dataset (`data/<config>/<split>-0000i-of-0000N.parquet` + README.md card with YAML `configs`),
optionally uploaded to the Hub (only changed files).

The synthetic stages run on demand (they cost model time), so their partitions are read where they
exist; the sources without them are listed in the metadata (`synthetic_missing`), never an error."""

import json
import os
import re
from collections import Counter
from typing import Literal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from resources.hub import HubResource, plan_upload, sha256_file, shrink_reason
from resources.sources import SourceRegistryResource
from resources.storage import MissingPartitionError, StorageResource

from ..common import asset_names as A
from ..common.accounting import rejects_table
from ..common.metadata import markdown_preview
from ..common.reason_rules import HYGIENE_METADATA_KEY, RULE_OF
from .hf_dataset import (CONFIGS, PREFERENCE_FORMATS, MANIFEST_SCHEMA, dataset_card, generated_config, leave_out,
                         preference_config, preference_synthetic_config, write_dataset)

#: export config -> the synthetic asset it reads (where materialised)
SYNTHETIC = {"evol": "evolved_instructions", "generated": "generated_solutions",
             "preference_synthetic": "preference_pairs", "steerlm": "steerlm_sft"}
#: export config -> the hygiene table read instead of its asset for a source where it exists
CLEAN = {"sft": A.CLEAN_SFT_RECORDS, "cot": A.CLEAN_COT_RECORDS, "preference": A.CLEAN_PREFERENCE_RECORDS,
         "evol": A.CLEAN_EVOLVED_INSTRUCTIONS, "generated": A.CLEAN_GENERATED_SOLUTIONS,
         "preference_synthetic": A.CLEAN_PREFERENCE_PAIRS}
RECORD_ASSETS = {"sft": A.SFT_RECORDS, "cot": A.COT_RECORDS, "preference": A.PREFERENCE_RECORDS}
#: export config -> how the synthetic asset's rows become the config's rows (default: as they are)
CONVERT = {"generated": generated_config, "preference_synthetic": preference_synthetic_config}

GROUP = "export"


class HfParquetConfig(dg.Config):
    export_dir: str = ""  # "" = <storage root>/hf_export (local folder)
    title: str = "posttrain export"
    max_shard_bytes: int = 256 * 1024 * 1024
    test_fraction: float = 0.0  # > 0: deterministic train/test split by id hash
    include_ties: bool = False  # preference rows flagged `tie` are left out by default (counted)
    # `preference` config: "both" = prompt / chosen / rejected strings + chosen_messages / rejected_messages;
    # "trl" = TRL's conversational format (chosen / rejected = each side's whole conversation)
    preference_format: Literal[PREFERENCE_FORMATS] = "both"
    card_body_path: str = ""  # a Markdown file kept verbatim in README.md (the seed's original_readme)
    # publish an export that would take data off the Hub (empty, or without a config the repo has)
    allow_shrink: bool = False
    # leave out the records `contamination` found a benchmark item in (counted, in the rejects with the item)
    leave_out_contaminated: bool = True
    # read a source's clean_* table (the hygiene rules) instead of its record / synthetic table where it exists
    use_hygiene: bool = True


def _materialised(store, asset: str, keys: list[str], clean: tuple[str, set] = ("", set()),
                  stamps: dict | None = None) -> tuple[pa.Table | None, list[str]]:
    """The partitions of `asset` that exist (the `clean` asset's for its keys, their hygiene stamps into
    `stamps`), concatenated, and the keys that do not."""
    tables, missing = [], []
    for key in keys:
        try:
            tables.append(_read_clean(store, clean[0], key, stamps) if key in clean[1]
                          else store.read(store.path(asset, key)))
        except MissingPartitionError:
            missing.append(key)
    return (pa.concat_tables(tables, promote_options="default") if tables else None), missing


def _read_clean(store, clean: str, key: str, stamps: dict | None) -> pa.Table:
    """A clean table's partition; the actions it was filtered with (its schema metadata) into `stamps`."""
    table = store.read(store.path(clean, key))
    raw = (table.schema.metadata or {}).get(HYGIENE_METADATA_KEY.encode())
    if stamps is not None and raw:
        stamps[key] = json.loads(raw)
    return table.replace_schema_metadata(None)


def _latest(instance, asset: str) -> dict[str, int]:
    return dict(instance.event_log_storage.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION))


def hygiene_keys(instance, keys: list[str]) -> dict[str, set]:
    """export config -> the sources whose clean table exists; fails when one is older than the table it
    filters (the records were re-materialised after it: its rows would be stale)."""
    out, stale = {}, []
    for config, clean in CLEAN.items():
        source = RECORD_ASSETS.get(config) or SYNTHETIC[config]
        done, upstream = _latest(instance, clean), _latest(instance, source)
        out[config] = {k for k in keys if k in done}
        stale += [f"{clean}[{k}]" for k in sorted(out[config]) if upstream.get(k, -1) > done[k]]
    if stale:
        raise dg.Failure(description=f"hygiene tables older than the table they filter: {', '.join(stale[:8])}"
                                     f"{' ...' if len(stale) > 8 else ''}; materialise them again (records_job / "
                                     f"synthesis_job) or set use_hygiene: false", allow_retries=False)
    return out


def with_hygiene(store, table: pa.Table, clean: str, keys: set, stamps: dict) -> pa.Table:
    """`table` (every source's records) with the rows of the sources in `keys` replaced by their clean table."""
    if not keys:
        return table
    rest = table.filter(pc.invert(pc.is_in(table["source"], pa.array(sorted(keys))))) if table.num_rows else table
    cleans = [_read_clean(store, clean, k, stamps) for k in sorted(keys)]
    return pa.concat_tables([rest, *cleans], promote_options="default")


def read_records(instance, store, keys: list[str], use_hygiene: bool, raw: dict) -> tuple[dict, dict, dict, set]:
    """(the record tables with each source's clean table where it exists, the sources with one per config,
    their hygiene stamps, the SFT ids the hygiene dropped: their SteerLM rows, labelled from sft_records,
    stay out of the export too)."""
    clean_keys = hygiene_keys(instance, keys) if use_hygiene else {c: set() for c in CLEAN}
    stamps: dict = {}  # source -> the hygiene actions its clean tables were filtered with
    records = {c: with_hygiene(store, t, CLEAN[c], clean_keys[c], stamps) for c, t in raw.items()}
    return records, clean_keys, stamps, dropped_ids(raw["sft"], records["sft"], clean_keys["sft"])


def dropped_ids(raw: pa.Table, clean: pa.Table, keys: set) -> set:
    """all_prompt_ids of the sources in `keys` that are in `raw` and not in `clean` (the hygiene dropped them)."""
    if not keys or not raw.num_rows:
        return set()
    mine = raw.filter(pc.is_in(raw["source"], pa.array(sorted(keys))))["all_prompt_id"].to_pylist()
    return set(mine) - set(clean["all_prompt_id"].to_pylist())


def hygiene_summary(store, tables: dict, clean_keys: dict, config: HfParquetConfig, stamps: dict) -> dict:
    """What the card says of the hygiene: the actions most sources were filtered with and the sources
    filtered otherwise (the clean tables' stamps), the lists' versions, per config the rows each rule
    dropped (the clean tables' rejects) and flagged (the exported rows' hygiene_flags)."""
    by_rules = Counter(json.dumps(s["rules"], sort_keys=True) for s in stamps.values())
    first = {json.dumps(s["rules"], sort_keys=True): s["rules"] for s in reversed(list(stamps.values()))}
    common = first[by_rules.most_common(1)[0][0]] if by_rules else {}  # in the rules' order
    out = {"use": config.use_hygiene, "rules": common,
           "overrides": {k: {r: a for r, a in s["rules"].items() if common.get(r) != a}
                         for k, s in sorted(stamps.items()) if s["rules"] != common},
           "lists_version": sorted({s.get("lists_version") for s in stamps.values()}), "configs": {}}
    for name, keys in clean_keys.items():
        if name not in tables or not keys:
            continue
        dropped = Counter()
        for k in keys:
            try:
                rejects = store.read(store.rejects_path(CLEAN[name], k))
            except MissingPartitionError:
                continue
            dropped.update(RULE_OF.get(r, r) for r in rejects["reason"].to_pylist())
        t = tables[name]
        flags = t["hygiene_flags"].to_pylist() if "hygiene_flags" in t.column_names else []
        raw = set(t["source"].unique().to_pylist()) - keys if t.num_rows and "source" in t.column_names else set()
        out["configs"][name] = {"clean_sources": len(keys), "raw_sources": len(raw), "dropped": dict(dropped),
                                "flagged": dict(Counter(r for f in flags if f for r in f))}
    return out


def _publish(context, hub: HubResource, out_dir: str, manifest: list[dict], allow_shrink: bool):
    """Upload what changed when the hub is set up: (ready, why not, action per file, commit). An export
    that would take data off the Hub is refused unless `allow_shrink`."""
    files = [m["path"] for m in manifest] + ["README.md"]
    ready, why = hub.ready()
    actions = {p: "local" for p in files}
    commit = None
    if not ready:
        context.log.info(why)
        return ready, why, actions, commit
    remote = hub.remote_files()
    why_not = shrink_reason(files, remote)
    if why_not and not allow_shrink:
        raise dg.Failure(description=f"hub {hub.repo_id}: not published: {why_not}; the local export is in "
                                     f"{out_dir}. Set allow_shrink: true to publish it anyway.",
                         allow_retries=False)
    plan = plan_upload(out_dir, files, remote)
    commit = hub.upload(out_dir, plan, message=f"posttrain export ({len(manifest)} shards)")
    actions.update({p: "upload" for p in plan.upload})
    actions.update({p: "unchanged" for p in plan.skip})
    context.log.info(f"hub {hub.repo_id}: uploaded {len(plan.upload)}, unchanged {len(plan.skip)}, "
                     f"deleted {len(plan.delete)}")
    return ready, why, actions, commit


def _decontamination(instance, removed: dict, leave_out_rows: bool) -> dict:
    """What the card says of the decontamination: the benchmarks of the index, the check's settings
    (their latest materialisations' metadata) and the rows left out."""
    ev = instance.get_latest_materialization_event(dg.AssetKey(A.BENCHMARK_INDEX))
    index = ev.asset_materialization.metadata if ev and ev.asset_materialization else {}
    check = _latest_metadata(instance, A.CONTAMINATION)
    return {"benchmarks": index["benchmarks"].value if "benchmarks" in index else {},
            "n": index["n"].value if "n" in index else None, "cjk_n": index["cjk_n"].value if "cjk_n" in index else None,
            "rule": check.get("rule"), "threshold": check.get("threshold"), "leave_out": leave_out_rows,
            "removed": removed}


def _latest_metadata(instance, key: str) -> dict:
    ev = instance.get_latest_materialization_event(dg.AssetKey(key))
    if ev is None or ev.asset_materialization is None:
        return {}
    return {k: v.value for k, v in ev.asset_materialization.metadata.items()
            if isinstance(v.value, (int, float, str, bool))}


def source_mask(column: pa.ChunkedArray, spec) -> pa.ChunkedArray:
    """Rows of one registry entry: `source` = its key, or one of its shard keys when it is sharded."""
    if not spec.sharded:
        return pc.equal(column, spec.key)
    return pc.match_substring_regex(column, f"^{re.escape(spec.key)}\\.s([0-9]{{4}}|[1-9][0-9]{{4}})$")


@dg.asset(
    group_name=GROUP, kinds={"parquet", "huggingface"},
    ins={name: dg.AssetIn(partition_mapping=dg.AllPartitionMapping())
         for name in (A.SFT_RECORDS, A.COT_RECORDS, A.PREFERENCE_RECORDS, A.CONTAMINATION)},
    deps=[dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in (*SYNTHETIC.values(), *CLEAN.values())]
    + [dg.AssetDep(A.CONTAMINATION_REPORT)],  # its blocking check (benchmark_share) stops the export
    description="Hugging Face Parquet export of every source's records without the contaminated ones (+ the "
                "synthetic evol / generated / preference_synthetic tables where materialised) + dataset card; "
                "uploads changed files when a hub repo_id and HF_TOKEN are set.",
)
def hf_parquet(context: dg.AssetExecutionContext, config: HfParquetConfig, storage: StorageResource,
               registry: SourceRegistryResource, hub: HubResource, sft_records: pa.Table,
               cot_records: pa.Table, preference_records: pa.Table, contamination: pa.Table) -> dg.Output:
    store = storage.store()
    reg = registry.load()
    records, clean_keys, stamps, hygiene_dropped = read_records(
        context.instance, store, reg.keys, config.use_hygiene,
        {"sft": sft_records, "cot": cot_records, "preference": preference_records})
    removed, issues = {}, []
    if config.leave_out_contaminated:
        records, issues, removed = leave_out(records, contamination)
    storage.write_rejects(context.asset_key, None, rejects_table("(all sources)", A.HF_PARQUET, issues))
    sft_records, cot_records, preference_records = records["sft"], records["cot"], records["preference"]
    out_dir = config.export_dir or (os.path.join(store.base, "hf_export") if store.is_local
                                    else os.path.abspath("hf_export"))
    ties = 0
    if "tie" in preference_records.column_names:
        tie_mask = pc.fill_null(preference_records["tie"], False)
        ties = int(pc.sum(tie_mask).as_py() or 0)
        if not config.include_ties:  # ties left out: the flag column is then constant, dropped
            preference_records = preference_records.filter(pc.invert(tie_mask)).drop_columns(
                [c for c in ("tie", "tie_kind") if c in preference_records.column_names])
    try:
        preference_records = preference_config(preference_records, config.preference_format)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    tables = {"sft": sft_records, "cot": cot_records, "preference": preference_records}
    synthetic_missing = {}
    for name, asset in SYNTHETIC.items():
        table, missing = _materialised(store, asset, reg.keys, (CLEAN.get(name, ""), clean_keys.get(name, set())),
                                       stamps)
        if table is not None and name == "steerlm" and hygiene_dropped and table.num_rows:
            table = table.filter(pc.invert(pc.is_in(table["id"], pa.array(sorted(hygiene_dropped), pa.string()))))
        if table is not None:
            tables[name] = CONVERT[name](table) if name in CONVERT else table
        synthetic_missing[name] = missing
    manifest = write_dataset(tables, out_dir, max_shard_bytes=config.max_shard_bytes,
                             test_fraction=config.test_fraction)
    per_source = []
    for s in reg.sources:
        row = {"key": s.key, "kind": s.kind, "licence": s.licence}
        for name, t in tables.items():  # a sharded source's rows: those of its shard keys
            row[name] = int(pc.sum(source_mask(t["source"], s)).as_py() or 0) if t.num_rows else 0
        row.update({n: 0 for n in CONFIGS if n not in row})
        if any(row[n] for n in CONFIGS):
            per_source.append(row)
    produced_by = {"hf_parquet": config.model_dump(exclude={"card_body_path"}),
                   "dedup_clusters": _latest_metadata(context.instance, "dedup_clusters"),
                   "embeddings_model": _latest_metadata(context.instance, "prompt_embeddings").get("model")}
    body = open(config.card_body_path, encoding="utf-8").read() if config.card_body_path else None
    decon = _decontamination(context.instance, removed, config.leave_out_contaminated)
    hygiene = hygiene_summary(store, tables, clean_keys, config, stamps)
    card = dataset_card(manifest, per_source, produced_by, title=config.title, body=body, decontamination=decon,
                        hygiene=hygiene)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)

    ready, why, actions, commit = _publish(context, hub, out_dir, manifest, config.allow_shrink)
    readme_sha = sha256_file(os.path.join(out_dir, "README.md"))
    rows = [{**m, "upload": actions[m["path"]]} for m in manifest]
    rows.append({"path": "README.md", "config": None, "split": None, "rows": None,
                 "bytes": len(card.encode()), "sha256": readme_sha, "upload": actions["README.md"]})
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    counts = {f"rows_{c}": sum(m["rows"] for m in manifest if m["config"] == c) for c in CONFIGS}
    return dg.Output(table, metadata={
        "dagster/row_count": table.num_rows, "export_dir": dg.MetadataValue.path(out_dir),
        **counts, "synthetic_missing": dg.MetadataValue.json(synthetic_missing),
        "contaminated_left_out": sum(n for c in removed.values() for n in c.values()),
        "contaminated_by_config": dg.MetadataValue.json(removed),
        "hygiene": dg.MetadataValue.json({c: {"clean_sources": len(k)} | hygiene["configs"].get(c, {})
                                          for c, k in clean_keys.items()}),
        "hygiene_dropped_sft": len(hygiene_dropped),
        "ties_total": ties, "ties_excluded": 0 if config.include_ties else ties,
        "hub": hub.repo_id or "local only", "hub_status": "uploaded" if ready else why,
        **({"commit": commit} if commit else {}),
        "files": dg.MetadataValue.md(markdown_preview(table, n=50, columns=["path", "rows", "bytes", "upload"])),
    })
