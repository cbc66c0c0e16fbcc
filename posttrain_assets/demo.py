"""The main job: materialise every per-source asset for every registry source, then summarise.

    python -m posttrain_assets.demo [--registry FILE] [--source KEY ...]

Runs go into the Dagster instance at $DAGSTER_HOME (default ./.dagster_home), so `make ui`
shows them; tables go to $POSTTRAIN_STORAGE (default ./storage) and the DuckDB catalogue.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from partitions import source_partitions, sync_partitions
from partitions.registry import RegistryError, load_registry
from resources.storage import StorageResource

REPO = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def ensure_instance() -> dg.DagsterInstance:
    home = os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    os.makedirs(home, exist_ok=True)
    cfg = Path(home) / "dagster.yaml"
    template = REPO / "deploy" / "dagster.yaml"
    if not cfg.exists() and template.exists():
        shutil.copy(template, cfg)
    return dg.DagsterInstance.get()


def _meta(event, key, default=None):
    value = event.materialization.metadata.get(key)
    return default if value is None else value.value


def summarise(results: dict[str, dict]) -> str:
    head = ["source", "kind", "raw rows", "raw rejected", "records in", "kept", "removed",
            "rejected", "reasons", "seconds"]
    rows = []
    for key, r in results.items():
        reasons = {**r.get("raw_rejected_by", {}), **r.get("rejected_by", {}), **r.get("removed_by", {})}
        rows.append([key, r.get("kind", "?"), r.get("raw_in", "-"), r.get("raw_rejected", "-"),
                     r.get("rows_in", "-"), r.get("rows_out", "-"), r.get("removed", "-"),
                     r.get("rejected", "-"),
                     ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "-",
                     f"{r['seconds']:.1f}" if "seconds" in r else "-"])
        if r.get("error"):
            rows[-1][8] = "FAILED: " + r["error"][:80]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def run(registry_path: str | None = None, only: list[str] | None = None) -> int:
    from .definitions import defs

    reg = load_registry(registry_path)
    if registry_path:
        os.environ["POSTTRAIN_SOURCES"] = str(Path(registry_path).resolve())
    instance = ensure_instance()
    plan = sync_partitions(instance, reg)
    print(f"registry {reg.path}: {len(reg.keys)} sources "
          f"({len(plan.added)} new partitions, {len(plan.present)} present)")
    job = defs.resolve_job_def("per_source_job")
    keys = only or reg.keys
    results: dict[str, dict] = {}
    failed = 0
    t_all = time.monotonic()
    for key in keys:
        t0 = time.monotonic()
        res = job.execute_in_process(partition_key=key, instance=instance, run_config=QUIET,
                                     raise_on_error=False, tags={"posttrain/launched_by": "demo"})
        r: dict = {"kind": reg.get(key).kind, "seconds": time.monotonic() - t0}
        for ev in res.get_asset_materialization_events():
            name = ev.asset_key.to_user_string()
            if name == "raw_records":
                r["raw_in"] = _meta(ev, "rows_in")
                r["raw_rejected"] = _meta(ev, "rejected")
                r["raw_rejected_by"] = _meta(ev, "rejected_by_reason", {})
            elif name == "merged_prompts":
                for k in ("rows_in", "rows_out", "removed", "rejected"):
                    r[k] = _meta(ev, k)
                r["rejected_by"] = _meta(ev, "rejected_by_reason", {})
                r["removed_by"] = _meta(ev, "removed_by_reason", {})
        if not res.success:
            failed += 1
            failure = next((e for e in res.all_events if e.is_step_failure), None)
            r["error"] = (failure.step_failure_data.error.message.strip() if failure and
                          failure.step_failure_data.error else "run failed")
        print(f"  {key}: {'ok' if res.success else 'FAILED'} in {r['seconds']:.1f}s (run {res.run_id[:8]})")
        results[key] = r

    storage = StorageResource()
    store, catalog = storage.store(), storage.catalog()
    print()
    print(summarise(results))
    print()
    total = sum(r.get("rows_out") or 0 for r in results.values())
    print(f"{len(keys)} sources, {total:,} merged prompts in {time.monotonic() - t_all:.1f}s"
          + (f"; {failed} FAILED" if failed else ""))
    print(f"Parquet:   {store.uri(store.base)}/<asset>/source=<key>/data.parquet")
    print(f"Rejects:   {store.uri(store.base)}/_rejects/<asset>/source=<key>/data.parquet")
    print(f"DuckDB:    {catalog.path}  (views: raw_records, merged_prompts, rejects)")
    print("  query:   .venv/bin/python -m resources \"SELECT source, count(*) FROM merged_prompts GROUP BY 1\"")
    print(f"Dagster:   DAGSTER_HOME={os.environ['DAGSTER_HOME']}; `make ui` -> http://127.0.0.1:3000")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain_assets.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default=None)
    ap.add_argument("--source", action="append", default=None, help="only this source (repeatable)")
    args = ap.parse_args(argv)
    try:
        return run(args.registry, args.source)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
