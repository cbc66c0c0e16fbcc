"""SteerLM stage (NeMo-Aligner's procedure): attribute training data per `attributes` source, the
attribute model (global, an artifact under the storage root), SFT rows labelled with its predictions,
and the two SteerLM training formats.

    attribute_training_data (per source) -> attribute_model (global) -> attribute_labelled_sft (per
    source, over sft_records / evolved_instructions / magpie_instructions) -> steerlm_sft (per source)
"""

import tempfile
import time
from typing import Literal, Union

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from partitions import source_partitions
from resources.embeddings import EmbeddingClient
from resources.sources import SourceRegistryResource
from resources.storage import StorageResource, check_partition_key

from ..common import asset_names as A
from ..common.accounting import Accounting, rejects_table
from ..common.metadata import (accounting_check, all_rejected_metadata, markdown_preview, model_asset,
                               read_input_partition, stage_metadata, unique_check)
from ..common.pools import GPU_POOL
from ..common.stages import source_skipped, stage_items
from . import model as am
from .attributes import ATTRIBUTES
from .head import evaluate_predictions
from .lora import LoraSettings
from .labelling import INPUT_ASSETS, Checkpoint, conversations, histograms, label, steerlm_rows
from .training_data import SCHEMA as TRAINING_SCHEMA, attribute_rows, label_counts

GROUP = "steerlm"


class AttributeDataConfig(dg.Config):
    val_fraction: float = 0.2  # share of groups (OASST trees / HelpSteer prompts) held out for validation
    seed: int = 0  # the split's hash seed


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=[dg.AssetCheckSpec("row_accounting", asset="attribute_training_data", blocking=True),
                       dg.AssetCheckSpec("id_unique", asset="attribute_training_data")],
          description="Per `attributes` source: each human-labelled reply as text (context + reply), the 9 SteerLM "
                      "attributes (0-4, null = missing) and a train/val split by OASST tree or prompt.")
def attribute_training_data(context: dg.AssetExecutionContext, config: AttributeDataConfig,
                            registry: SourceRegistryResource, storage: StorageResource, merged_prompts: pa.Table):
    key = context.partition_key
    spec = registry.get(key)
    applies = spec.kind == "attributes"
    table, issues = (attribute_rows(merged_prompts, key, val_fraction=config.val_fraction, seed=config.seed)
                     if applies else (TRAINING_SCHEMA.empty_table(), []))
    storage.write_rejects(context.asset_key, key, rejects_table(key, "attribute_training_data", issues))
    acc = Accounting.from_issues(merged_prompts.num_rows if applies else 0, table.num_rows, issues)
    counts = label_counts(table)
    md = stage_metadata(table, acc, text_column="text",
                        preview_columns=["id", "split", "label_string", "language", "text"],
                        extra={"applies": applies, "kind": spec.kind,
                               "labels_per_attribute": dg.MetadataValue.json(counts),
                               "train_rows": sum(1 for s in table["split"].to_pylist() if s == "train"),
                               "val_rows": sum(1 for s in table["split"].to_pylist() if s == "val"),
                               "groups": len(set(table["group"].to_pylist())),
                               **all_rejected_metadata(context, key, acc, issues)})
    yield dg.Output(table, metadata=md)
    yield accounting_check(acc)
    yield unique_check(table, "id")


class HeadBackend(dg.Config):
    """CPU default: ridge heads over frozen embeddings (the `embeddings` resource's model)."""
    name: Literal["head"] = "head"
    max_chars: int = 2000  # the tail of each text / reply the embedder sees
    l2_grid: list[float] = list(am.L2_GRID)  # ridge strengths tried per attribute (grouped 5-fold CV)


class LoraBackend(dg.Config, LoraSettings):
    """LoRA (peft, GPU) on a causal LM with a regression head; the fields are `LoraSettings`' (lora.py),
    base_model "embedded" = the bundled SmolLM2-135M."""
    name: Literal["lora"] = "lora"


class AttributeModelConfig(dg.Config):
    backend: Union[HeadBackend, LoraBackend] = Field(default=HeadBackend(), discriminator="name")


MODEL_SCHEMA = pa.schema([
    ("attribute", pa.string()), ("train_rows", pa.int64()), ("val_rows", pa.int64()), ("mae", pa.float64()),
    ("baseline_mae", pa.float64()), ("spearman", pa.float64()), ("l2", pa.float64()),
    ("version", pa.string()), ("backend", pa.string()), ("path", pa.string()),
])


@dg.asset(group_name=GROUP, kinds={"parquet", "pytorch"}, pool=GPU_POOL,
          ins={"attribute_training_data": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
          description="The SteerLM attribute model trained on every source's attribute_training_data (masked: a row "
                      "trains only the attributes it has); an artifact under <storage>/models/attribute_model/<version>/ "
                      "(the `version` metadata: what the reward's attributes backend loads), this table = its "
                      "per-attribute validation MAE / Spearman next to the training-mean baseline.")
def attribute_model(context: dg.AssetExecutionContext, config: AttributeModelConfig, storage: StorageResource,
                    embeddings: EmbeddingClient, attribute_training_data: pa.Table) -> dg.Output:
    data = attribute_training_data
    b = config.backend
    head = b.name == "head"
    rows = data.to_pylist()
    if not any(r["split"] == "train" for r in rows):
        raise dg.Failure(description="attribute_model: no training rows (materialise attribute_training_data for a "
                                     "source of kind `attributes`)", allow_retries=False)
    store = storage.store()
    texts, responses = [r["text"] for r in rows], [r["response"] for r in rows]
    labels, splits, groups = [r["labels"] for r in rows], [r["split"] for r in rows], [r["group"] for r in rows]
    Y = np.array([[np.nan if v is None else v for v in row] for row in labels], dtype=np.float64)
    tr, va = np.array([s == "train" for s in splits]), np.array([s == "val" for s in splits])
    train_mean = {a: (float(np.nanmean(Y[tr, j])) if (~np.isnan(Y[tr, j])).any() else None)
                  for j, a in enumerate(ATTRIBUTES)}
    # the settings that shape the model (they enter its version)
    settings = {"max_chars": b.max_chars, "l2_grid": list(b.l2_grid)} if head else b.version_settings()
    embedder = embeddings.model_name if head else None
    version = am.data_version([r["id"] for r in rows], texts, labels, splits,
                              {"backend": b.name, "settings": settings, "embedder": embedder,
                               "features": am.FEATURES_VERSION})
    folder = am.artifact_dir(store.base, version)
    t0 = time.monotonic()
    l2 = {}
    if head:
        model, l2, X, _ = am.train_head(lambda t: embeddings.encode(t), embedder, texts, responses, labels, splits,
                                        groups, max_chars=b.max_chars, l2_grid=b.l2_grid, log=context.log.info)
        raw = model.predict(X[va])
        pred = np.column_stack([raw[a] if raw[a] is not None else np.full(va.sum(), np.nan) for a in ATTRIBUTES]) \
            if va.any() else np.zeros((0, len(ATTRIBUTES)))
        extra = {"l2": l2}
    else:
        from .lora import lora_files, train_lora

        local = tempfile.mkdtemp(prefix="attribute-lora-")
        stats, pred = train_lora([t for t, k in zip(texts, tr) if k], [lb for lb, k in zip(labels, tr) if k], local, b,
                                 log=context.log.info, predict_texts=[t for t, k in zip(texts, va) if k])
        extra = {"training": stats, "files": lora_files(local)}
    metrics = evaluate_predictions({a: pred[:, j] for j, a in enumerate(ATTRIBUTES)}, Y[va], train_mean)
    train_rows = {a: int((~np.isnan(Y[tr, j])).sum()) for j, a in enumerate(ATTRIBUTES)}
    manifest = am.jsonable({"version": version, "backend": b.name, "embedder": embedder,
                            "features": am.FEATURES if head else "text",
                            **({"max_chars": b.max_chars} if head else {}), "settings": settings, "metrics": metrics,
                            "train_rows": train_rows, "train_mean": train_mean, **extra,
                            "sources": sorted(set(data["source"].to_pylist()))})
    if head:
        am.save_head(store, folder, model, manifest)
    else:
        am.save_folder(store, folder, local, manifest)
    seconds = time.monotonic() - t0
    table = pa.Table.from_pylist(
        [{"attribute": a, "train_rows": train_rows[a], "val_rows": metrics[a]["n"], "mae": metrics[a]["mae"],
          "baseline_mae": metrics[a]["baseline_mae"], "spearman": metrics[a]["spearman"],
          "l2": l2.get(a), "version": version, "backend": b.name, "path": store.uri(folder)}
         for a in ATTRIBUTES], schema=MODEL_SCHEMA)
    beats = [a for a in ATTRIBUTES if metrics[a]["mae"] is not None and metrics[a]["mae"] < metrics[a]["baseline_mae"]]
    per_source = {s: {a: sum(1 for r in rows if r["source"] == s and r["labels"][j] is not None)
                      for j, a in enumerate(ATTRIBUTES)} for s in sorted({r["source"] for r in rows})}
    context.log.info(f"attribute model {version} ({b.name}): beats the mean baseline on "
                     f"{', '.join(beats) or 'nothing'}; {seconds:.1f}s")
    return dg.Output(table, metadata={
        "dagster/row_count": table.num_rows, "dagster/column_schema": _schema_md(table),
        "version": version, "backend": b.name, "path": dg.MetadataValue.path(store.uri(folder)),
        "embedder": embedder or "-", "rows_train": int(tr.sum()), "rows_val": int(va.sum()),
        "validation": dg.MetadataValue.md(markdown_preview(table, n=len(ATTRIBUTES), columns=[
            "attribute", "train_rows", "val_rows", "mae", "baseline_mae", "spearman", "l2"])),
        "beats_mean_baseline": ", ".join(beats) or "none",
        "rows_per_source_and_attribute": dg.MetadataValue.json(per_source),
        "train_seconds": round(seconds, 1)})


def _schema_md(table: pa.Table) -> dg.TableSchema:
    from ..common.metadata import column_schema

    return column_schema(table.schema)


class LabelConfig(dg.Config):
    input_asset: Literal[INPUT_ASSETS] = A.SFT_RECORDS
    chunk_rows: int = 256  # predictions committed per chunk (what a killed run keeps)
    device: str = "auto"  # lora backend: auto, cpu, cuda, cuda:N


@model_asset("attribute_labelled_sft", group=GROUP, unique="id", deps=[a for a in INPUT_ASSETS if a != A.SFT_RECORDS],
             description="SFT rows labelled with the attribute model: 9 predicted attributes clamped to [0, 4] and "
                         "rounded (NeMo's attribute_annotate), the label string, the model version; resumable by row "
                         "key (committed chunks).")
def attribute_labelled_sft(context: dg.AssetExecutionContext, config: LabelConfig, storage: StorageResource,
                           registry: SourceRegistryResource, embeddings: EmbeddingClient, attribute_model: pa.Table,
                           sft_records: pa.Table):
    key = context.partition_key
    table = (sft_records if config.input_asset == A.SFT_RECORDS
             else read_input_partition(storage, config.input_asset, key, INPUT_ASSETS))
    try:
        rows, issues = conversations(table, key, config.input_asset)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    rows, removed = stage_items(rows, source_skipped(registry, key, GROUP, context.log.info), lambda xs: xs)
    store = storage.store()
    version = attribute_model["version"][0].as_py()
    predictor = am.load(store, am.artifact_dir(store.base, version), embed=lambda t: embeddings.encode(t),
                        embedder_name=embeddings.model_name, device=config.device)  # the embedder loads lazily
    ckpt = Checkpoint(store, f"{store.base}/_checkpoints/attribute_labelled_sft/source={check_partition_key(key)}/{version}")
    out, stats = label(rows, key, config.input_asset, predictor, ckpt, chunk_rows=config.chunk_rows,
                       log=context.log.info)
    storage.write_rejects(context.asset_key, key, rejects_table(key, "attribute_labelled_sft", issues))
    acc = Accounting.from_issues(table.num_rows, out.num_rows, issues)
    acc.removed_by_reason.update(removed)
    md = stage_metadata(out, acc, preview_columns=["id", "label_string", "model_version"], extra={
        "input_asset": config.input_asset, "model_version": version, **stats,
        "histograms": dg.MetadataValue.json(histograms(out)),
        **all_rejected_metadata(context, key, acc, issues)})
    yield dg.Output(out, metadata=md)
    yield accounting_check(acc)
    yield unique_check(out, "id")


class SteerlmConfig(dg.Config):
    steerlm_system: str = ""  # "" = NeMo's default system turn
    llmjp_system: str = ""  # "" = the seed's llm-jp instruction header


@dg.asset(partitions_def=source_partitions, group_name=GROUP, kinds={"parquet"},
          check_specs=[dg.AssetCheckSpec("row_accounting", asset="steerlm_sft", blocking=True),
                       dg.AssetCheckSpec("id_unique", asset="steerlm_sft")],
          description="SteerLM SFT data: each labelled conversation in NeMo's <extra_id_*> format and in the llm-jp-sft "
                      "format, the label string before the assistant's reply.")
def steerlm_sft(context: dg.AssetExecutionContext, config: SteerlmConfig, attribute_labelled_sft: pa.Table):
    table = steerlm_rows(attribute_labelled_sft, steerlm_system=config.steerlm_system or None,
                         llmjp_system=config.llmjp_system or None)
    acc = Accounting(rows_in=attribute_labelled_sft.num_rows, rows_out=table.num_rows)
    yield dg.Output(table, metadata=stage_metadata(table, acc, text_column="steerlm_text",
                                                   preview_columns=["id", "label_string", "steerlm_text"]))
    yield accounting_check(acc)
    yield unique_check(table, "id")

