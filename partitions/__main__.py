"""`python -m partitions {validate,list,sync}`: the sources registry from the command line.

    python -m partitions validate [--registry FILE]   check the registry, print one line per source
    python -m partitions list     [--registry FILE]   registry keys vs the instance's partitions
    python -m partitions sync     [--registry FILE]   add missing `source` partitions to $DAGSTER_HOME
    python -m partitions shards KEY [--registry FILE] [--range]
                                                      the partition keys of one source (its shards), one
                                                      a line; --range: `[first...last]` for a backfill
"""

from __future__ import annotations

import argparse
import os
import sys

from . import plan_sync, source_partitions, sync_partitions
from .registry import RegistryError, load_registry


def _instance():
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        raise SystemExit("DAGSTER_HOME is not set: point it at the Dagster instance folder "
                         "(make demo / make ui use .dagster_home)")
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    return dg.DagsterInstance.get()


def _short(keys: list[str], most: int = 20) -> str:
    """The keys, comma-separated; a long list (a sharded source's) as its first and last keys."""
    if len(keys) <= most:
        return ", ".join(keys) or "-"
    return f"{', '.join(keys[:3])}, ... ({len(keys) - 4:,} more), {keys[-1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partitions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["validate", "list", "sync", "shards"])
    ap.add_argument("key", nargs="?", help="shards: the source key")
    ap.add_argument("--range", action="store_true", help="shards: print one `[first...last]` range")
    ap.add_argument("--registry", default=None, help="registry YAML (default: $POSTTRAIN_SOURCES "
                                                     "or partitions/sources.yaml)")
    args = ap.parse_args(argv)
    # the composition root: the owners register what the registry validates (partitions imports no stage)
    from posttrain_assets.plugins import load_plugins

    load_plugins()
    try:
        reg = load_registry(args.registry)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        try:
            for s in reg.sources:
                where = f"generator {s.generator} v{s.version}" if s.synthetic else (s.loader.hub or s.loader.path)
                if s.sharded:
                    total, size, n = s.shard_layout()
                    where += f"  ({total:,} rows: {n:,} shards of {size:,}, {s.key}.s0000 ..)"
                print(f"{s.key:28} {s.kind:11} {s.adapter:14} {s.licence:24} {where}")
            n_keys = len(reg.keys)
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{reg.path}: {n_keys} partitions; {len(reg.sources)} sources, valid")
        return 0
    if args.command == "shards":
        try:
            keys = [k for k in reg.keys if reg.parent_of(k) == args.key] if args.key else []
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not keys:
            print(f"error: {reg.path}: no source {args.key!r}; sources: {', '.join(reg.source_keys)}",
                  file=sys.stderr)
            return 2
        print(f"[{keys[0]}...{keys[-1]}]" if args.range else "\n".join(keys))
        return 0
    instance = _instance()
    try:
        reg.keys  # noqa: B018 - counts a sharded source's rows: a clear error before any change
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "list":
        plan = plan_sync(instance.get_dynamic_partitions(source_partitions.name), reg)
        for k in plan.present:
            print(f"{k:28} partition present")
        for k in plan.added:
            print(f"{k:28} in registry, no partition yet (run: python -m partitions sync)")
        for k in plan.orphaned:
            print(f"{k:28} partition not in the registry (kept)")
        return 0
    plan = sync_partitions(instance, reg)
    print(f"added {len(plan.added)} source partitions: {_short(plan.added)}; "
          f"{len(plan.present)} already present"
          + (f"; not in registry, kept: {', '.join(plan.orphaned)}" if plan.orphaned else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
