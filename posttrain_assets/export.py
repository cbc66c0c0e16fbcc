"""Export stage: `hf_parquet` — every source's SFT / CoT / preference records as a Hugging Face
Parquet dataset (`data/<config>/<split>-0000i-of-0000N.parquet` + README.md card with YAML
`configs`), optionally uploaded to the Hub (only changed files)."""

import hashlib
import os
import shutil
import uuid
from typing import Optional

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from resources.hub import HubResource, plan_upload, sha256_file
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource

from .metadata import markdown_preview

GROUP = "export"
CONFIGS = ("sft", "cot", "preference")
MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()), ("config", pa.string()), ("split", pa.string()), ("rows", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("upload", pa.string()),
])


def split_of(ids: list[str], test_fraction: float, seed: str = "posttrain") -> list[str]:
    """Deterministic train/test assignment by a hash of the id (stable when rows are added)."""
    if test_fraction <= 0:
        return ["train"] * len(ids)
    cut = int(test_fraction * 2**32)
    return ["test" if int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest(), "big") < cut
            else "train" for i in ids]


def shard(table: pa.Table, max_shard_bytes: int) -> list[pa.Table]:
    """Consecutive slices of at most ~max_shard_bytes (in-memory Arrow size) each."""
    if table.num_rows == 0:
        return []
    per_row = max(1, table.nbytes // table.num_rows)
    rows = max(1, max_shard_bytes // per_row)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def write_dataset(tables: dict[str, pa.Table], out_dir: str, *, max_shard_bytes: int,
                  test_fraction: float = 0.0) -> list[dict]:
    """Write data/<config>/<split>-*.parquet into a fresh staging folder, then swap it in (no stale
    shards survive a re-export). Returns one manifest row per file."""
    os.makedirs(out_dir, exist_ok=True)
    staging = os.path.join(out_dir, f".staging-{uuid.uuid4().hex[:8]}")
    manifest = []
    try:
        for config in CONFIGS:
            t = tables.get(config)
            if t is None or t.num_rows == 0:
                continue
            splits = pa.array(split_of(t["all_prompt_id"].to_pylist(), test_fraction))
            for split in ("train", "test"):
                part = t.filter(pc.equal(splits, split))
                shards = shard(part, max_shard_bytes)
                for i, s in enumerate(shards):
                    rel = f"data/{config}/{split}-{i:05d}-of-{len(shards):05d}.parquet"
                    full = os.path.join(staging, rel)
                    os.makedirs(os.path.dirname(full), exist_ok=True)
                    pq.write_table(s, full, compression="zstd")
                    manifest.append({"path": rel, "config": config, "split": split, "rows": s.num_rows,
                                     "bytes": os.path.getsize(full), "sha256": sha256_file(full)})
        old = os.path.join(out_dir, "data")
        if os.path.isdir(old):
            shutil.rmtree(old)
        if os.path.isdir(os.path.join(staging, "data")):
            os.replace(os.path.join(staging, "data"), old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def dataset_card(manifest: list[dict], sources: list[dict], produced_by: dict, *,
                 title: str, body: Optional[str] = None) -> str:
    """README.md with the YAML `configs` block `datasets` reads, counts, sources and provenance.
    A user-supplied `body` is kept verbatim after the generated header."""
    configs = []
    for config in CONFIGS:
        splits = sorted({m["split"] for m in manifest if m["config"] == config}, key=["train", "test"].index)
        if splits:
            configs.append({"config_name": config,
                            "data_files": [{"split": s, "path": f"data/{config}/{s}-*"} for s in splits]})
    licences = sorted({s["licence"] for s in sources})
    front = {"configs": configs, "license": "other", "license_name": "mixed (see Sources)",
             "tags": ["posttrain", "sft", "preference"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines += ["| config | split | rows | files |", "|---|---|---|---|"]
    for c in configs:
        for df in c["data_files"]:
            files = [m for m in manifest if m["config"] == c["config_name"] and m["split"] == df["split"]]
            lines.append(f"| {c['config_name']} | {df['split']} | {sum(m['rows'] for m in files):,} | {len(files)} |")
    lines += ["", "## Sources", "", "| source | kind | licence | sft | cot | preference |", "|---|---|---|---|---|---|"]
    for s in sources:
        lines.append(f"| {s['key']} | {s['kind']} | {s['licence']} | {s.get('sft', 0)} | {s.get('cot', 0)} | "
                     f"{s.get('preference', 0)} |")
    lines += ["", f"Licences involved: {', '.join(licences)}. Each row keeps its `source`; respect the "
              "licence of the source it came from.", "", "## How it was produced", "",
              "Materialised by the posttrain Dagster asset graph: raw_records -> merged_prompts -> "
              "prompt_embeddings -> dedup_clusters -> deduplicated_prompts -> sft_records / cot_records / "
              "preference_records -> hf_parquet.", "", "```yaml",
              yaml.safe_dump(produced_by, sort_keys=True).strip(), "```", ""]
    if body:
        lines += ["", body.strip(), ""]
    return "\n".join(lines)


class HfParquetConfig(dg.Config):
    export_dir: str = ""  # "" = <storage root>/hf_export (local folder)
    title: str = "posttrain export"
    max_shard_bytes: int = 256 * 1024 * 1024
    test_fraction: float = 0.0  # > 0: deterministic train/test split by id hash
    include_ties: bool = False  # preference rows flagged `tie` are left out by default (counted)
    card_body_path: str = ""  # a Markdown file kept verbatim in README.md (the seed's original_readme)


def _latest_metadata(instance, key: str) -> dict:
    ev = instance.get_latest_materialization_event(dg.AssetKey(key))
    if ev is None or ev.asset_materialization is None:
        return {}
    return {k: v.value for k, v in ev.asset_materialization.metadata.items()
            if isinstance(v.value, (int, float, str, bool))}


@dg.asset(
    group_name=GROUP, kinds={"parquet", "huggingface"},
    ins={name: dg.AssetIn(partition_mapping=dg.AllPartitionMapping())
         for name in ("sft_records", "cot_records", "preference_records")},
    description="Hugging Face Parquet export of every source's records + dataset card; uploads "
                "changed files when a hub repo_id and HF_TOKEN are set.",
)
def hf_parquet(context: dg.AssetExecutionContext, config: HfParquetConfig, storage: StorageResource,
               registry: SourceRegistryResource, hub: HubResource, sft_records: pa.Table,
               cot_records: pa.Table, preference_records: pa.Table) -> dg.Output:
    store = storage.store()
    out_dir = config.export_dir or (os.path.join(store.base, "hf_export") if store.is_local
                                    else os.path.abspath("hf_export"))
    ties = 0
    if "tie" in preference_records.column_names:
        tie_mask = pc.fill_null(preference_records["tie"], False)
        ties = int(pc.sum(tie_mask).as_py() or 0)
        if not config.include_ties:  # ties left out: the flag column is then constant, dropped
            preference_records = preference_records.filter(pc.invert(tie_mask)).drop_columns(["tie"])
    tables = {"sft": sft_records, "cot": cot_records, "preference": preference_records}
    manifest = write_dataset(tables, out_dir, max_shard_bytes=config.max_shard_bytes,
                             test_fraction=config.test_fraction)
    reg = registry.load()
    per_source = []
    for s in reg.sources:
        row = {"key": s.key, "kind": s.kind, "licence": s.licence}
        for name, t in tables.items():
            row[name] = int(pc.sum(pc.equal(t["source"], s.key)).as_py() or 0) if t.num_rows else 0
        if any(row[n] for n in CONFIGS):
            per_source.append(row)
    produced_by = {"hf_parquet": config.model_dump(exclude={"card_body_path"}),
                   "dedup_clusters": _latest_metadata(context.instance, "dedup_clusters"),
                   "embeddings_model": _latest_metadata(context.instance, "prompt_embeddings").get("model")}
    body = open(config.card_body_path, encoding="utf-8").read() if config.card_body_path else None
    card = dataset_card(manifest, per_source, produced_by, title=config.title, body=body)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)

    files = [m["path"] for m in manifest] + ["README.md"]
    ready, why = hub.ready()
    actions = {p: "local" for p in files}
    commit = None
    if ready:
        plan = plan_upload(out_dir, files, hub.remote_files())
        commit = hub.upload(out_dir, plan, message=f"posttrain export ({len(manifest)} shards)")
        actions.update({p: "upload" for p in plan.upload})
        actions.update({p: "unchanged" for p in plan.skip})
        context.log.info(f"hub {hub.repo_id}: uploaded {len(plan.upload)}, unchanged {len(plan.skip)}, "
                         f"deleted {len(plan.delete)}")
    else:
        context.log.info(why)
    readme_sha = sha256_file(os.path.join(out_dir, "README.md"))
    rows = [{**m, "upload": actions[m["path"]]} for m in manifest]
    rows.append({"path": "README.md", "config": None, "split": None, "rows": None,
                 "bytes": len(card.encode()), "sha256": readme_sha, "upload": actions["README.md"]})
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    counts = {f"rows_{c}": sum(m["rows"] for m in manifest if m["config"] == c) for c in CONFIGS}
    return dg.Output(table, metadata={
        "dagster/row_count": table.num_rows, "export_dir": dg.MetadataValue.path(out_dir),
        **counts, "ties_total": ties, "ties_excluded": 0 if config.include_ties else ties,
        "hub": hub.repo_id or "local only", "hub_status": "uploaded" if ready else why,
        **({"commit": commit} if commit else {}),
        "files": dg.MetadataValue.md(markdown_preview(table, n=50, columns=["path", "rows", "bytes", "upload"])),
    })
