"""Wall time and peak RSS per step at 100k / 300k / 1M rows of a real source (issue 19).

    python -m bench.scale_steps --rows 100000 300000 1000000 [--work /tmp/posttrain-scale]

Builds a JSONL of GSM8K train rows (../shared/data/gsm8k/train.jsonl, else the bundled 300-row
sample) repeated to N rows, copy c > 0 of a row with the prefix "(variant c) " on its question (so
no row is an exact duplicate of another), registers it as one `cot` source, then materialises
the per-source chain one step per subprocess, so each step's peak RSS (ru_maxrss = VmHWM of that
process, the Dagster import included) is its own:

    raw_records -> merged_prompts -> prompt_embeddings* -> dedup_clusters* -> deduplicated_prompts
    -> cot_records, sft_records, preference_records -> hf_parquet

`*` stand-ins, not the real steps: prompt_embeddings = random unit vectors (512-d float32, the
bundled model's shape) written batch by batch as that asset's partition (the real encoder's rate is
in bench/README.md "embeddings"; 1M rows would be ~40 min on this CPU); dedup_clusters = an
all-keep clusters table (every prompt its own cluster; the global dedup at 1M is
`bench.dedup --million`). Everything else is the real asset through `dg.materialize`, Parquet IO
manager included. `imports` is a process that only imports the definitions: the floor of every
step's RSS. Results: bench/results/scale_steps.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import time

REPO = Path(__file__).resolve().parents[1]
GSM8K = Path(os.environ.get("POSTTRAIN_BENCH_GSM8K") or REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl")
GSM8K_SAMPLE = REPO / "posttrain_assets" / "sample_data" / "gsm8k" / "train_300.jsonl"
KEY = "gsm8k_scale"
STEPS = ["imports", "raw_records", "merged_prompts", "prompt_embeddings", "dedup_clusters",
         "deduplicated_prompts", "cot_records", "sft_records", "preference_records", "hf_parquet"]
STAND_INS = {"prompt_embeddings", "dedup_clusters"}
EMBED_DIM = 512


def build_source(rows: int, work: Path) -> tuple[Path, Path]:
    """The N-row JSONL and a one-source registry for it."""
    src = GSM8K if GSM8K.exists() else GSM8K_SAMPLE
    base = [json.loads(line) for line in src.open() if line.strip()]
    work.mkdir(parents=True, exist_ok=True)
    data = work / "gsm8k_scale.jsonl"
    if not data.exists() or sum(1 for _ in data.open()) != rows:
        tmp = data.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for i in range(rows):
                copy, j = divmod(i, len(base))
                row = dict(base[j])
                if copy:
                    row["question"] = f"(variant {copy}) {row['question']}"
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.rename(data)
    registry = work / "registry.yaml"
    registry.write_text(json.dumps({"version": 1, "sources": [{
        "key": KEY, "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
        "loader": {"path": str(data)}, "description": f"GSM8K train x {rows} rows ({src.name})"}]}))
    return data, registry


# ---------------------------------------------------------------- one step (in its own process)


def _stand_in_embeddings(store) -> int:
    import numpy as np
    import pyarrow as pa

    from posttrain_assets.dedup.embedding import MODEL_TYPE, embeddings_schema
    from resources.storage import PartitionReader, TableStream

    merged = PartitionReader(store, store.path("merged_prompts", KEY))
    schema = embeddings_schema(EMBED_DIM)
    rng = np.random.default_rng(0)

    def batches():
        for b in merged.iter_batches(20_000, columns=["all_prompt_id"]):
            x = rng.standard_normal((b.num_rows, EMBED_DIM), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield pa.record_batch([
                b.column(0), pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), EMBED_DIM),
                pa.array(np.ones(b.num_rows, bool)),
                pa.DictionaryArray.from_arrays(pa.array(np.zeros(b.num_rows, np.int32)), pa.array(["random"])
                                               ).cast(MODEL_TYPE)], schema=schema)

    return store.write_stream(TableStream(schema, batches()), store.path("prompt_embeddings", KEY))


def _stand_in_clusters(store) -> int:
    import pyarrow as pa

    from posttrain_assets.dedup.duplicates import CLUSTERS_SCHEMA
    from resources.storage import PartitionReader, TableStream

    merged = PartitionReader(store, store.path("merged_prompts", KEY))

    def batches():
        start = 0
        for b in merged.iter_batches(50_000, columns=["all_prompt_id", "language"]):
            n, ids = b.num_rows, b.column(0)
            yield pa.record_batch({
                "all_prompt_id": ids, "source": pa.array([KEY] * n), "cluster_id": pa.array(range(start, start + n)),
                "representative_id": ids, "representative_source": pa.array([KEY] * n),
                "similarity": pa.array([1.0] * n, pa.float32()), "match": pa.array(["unique"] * n),
                "cluster_size": pa.array([1] * n, pa.int64()), "keep": pa.array([True] * n),
                "removed_reason": pa.nulls(n, pa.string()), "language": b.column(1),
                "representable": pa.array([True] * n)}, schema=CLUSTERS_SCHEMA)
            start += n

    return store.write_stream(TableStream(CLUSTERS_SCHEMA, batches()), store.path("dedup_clusters", None))


def run_step(step: str, storage: str, registry: str) -> dict:
    """One step in this process; `seconds` from after the imports (the step's own time)."""
    import dagster as dg

    from posttrain_assets.definitions import all_assets, build_resources
    from resources.sources import SourceRegistryResource
    from resources.storage import ParquetIOManager, ParquetStore, StorageResource

    t0 = time.time()
    ok, rows = True, None
    if step == "prompt_embeddings":
        rows = _stand_in_embeddings(ParquetStore(storage))
    elif step == "dedup_clusters":
        rows = _stand_in_clusters(ParquetStore(storage))
    elif step != "imports":
        st = StorageResource(root=storage, catalog_path=str(Path(storage) / "catalog.duckdb"))
        res = {**build_resources(), "storage": st, "io_manager": ParquetIOManager(storage=st),
               "registry": SourceRegistryResource(path=registry)}
        with dg.DagsterInstance.ephemeral() as inst:
            inst.add_dynamic_partitions("source", [KEY])
            out = dg.materialize(all_assets, selection=[step], partition_key=None if step == "hf_parquet" else KEY,
                                 instance=inst, resources=res, raise_on_error=False)
            ok = out.success and all(c.passed for c in out.get_asset_check_evaluations())
            for ev in out.get_asset_materialization_events():
                md = ev.materialization.metadata
                if "dagster/row_count" in md:
                    rows = md["dagster/row_count"].value
                elif "rows" in md:
                    rows = md["rows"].value
    return {"step": step, "ok": ok, "rows_out": rows, "seconds": round(time.time() - t0, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


# ---------------------------------------------------------------- the driver


def measure(rows: int, work: Path, steps: list[str]) -> list[dict]:
    wd = work / str(rows)
    _, registry = build_source(rows, wd)
    storage = wd / "storage"
    out = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "POSTTRAIN_SPILL_DIR": str(wd / "spill"), "DAGSTER_HOME": str(wd / "dagster_home")}
    (wd / "dagster_home").mkdir(exist_ok=True)
    (wd / "spill").mkdir(exist_ok=True)
    for step in steps:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "bench.scale_steps", "--child", step, str(storage), str(registry)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"step\"")]
        if proc.returncode or not line:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"{rows} rows, step {step}: exit {proc.returncode}")
        r = json.loads(line[-1])
        r.update(rows=rows, process_seconds=round(wall, 2),
                 rows_per_s=round(rows / r["seconds"]) if step != "imports" and r["seconds"] else None,
                 stand_in=step in STAND_INS)
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        print(json.dumps(run_step(*argv[1:4])), flush=True)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--work", default="/tmp/posttrain-scale")
    ap.add_argument("--steps", nargs="+", default=STEPS)
    ap.add_argument("--keep", action="store_true", help="keep the work folders (default: deleted per size)")
    args = ap.parse_args(argv)
    from bench.common import RESULTS, table

    results = []
    for n in args.rows:
        results += measure(n, Path(args.work), args.steps)
        if not args.keep:
            import shutil

            shutil.rmtree(Path(args.work) / str(n), ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_steps.json").write_text(json.dumps(results, indent=1))
    print(table(["rows", "step", "seconds", "rows/s", "peak RSS MB", "ok"],
                [[f"{r['rows']:,}", r["step"] + ("*" if r["stand_in"] else ""), r["seconds"],
                  f"{r['rows_per_s']:,}" if r["rows_per_s"] else "", r["peak_rss_mb"], r["ok"]] for r in results]))


if __name__ == "__main__":
    main(sys.argv[1:])
