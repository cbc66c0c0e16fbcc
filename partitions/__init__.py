"""Source registry -> the `source` dynamic partitions."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from .registry import Registry, RegistryError, SourceSpec, load_registry

source_partitions = dg.DynamicPartitionsDefinition(name="source")


@dataclass
class SyncPlan:
    added: list[str]
    present: list[str]
    orphaned: list[str]  # partitions no longer in the registry: kept, never deleted silently


def plan_sync(existing: list[str], registry: Registry) -> SyncPlan:
    have = set(existing)
    return SyncPlan(
        added=[k for k in registry.keys if k not in have],
        present=[k for k in registry.keys if k in have],
        orphaned=sorted(have - set(registry.keys)),
    )


def sync_partitions(instance: dg.DagsterInstance, registry: Registry) -> SyncPlan:
    """Add the registry's new keys to the `source` partitions of `instance`; remove nothing."""
    plan = plan_sync(instance.get_dynamic_partitions(source_partitions.name), registry)
    if plan.added:
        instance.add_dynamic_partitions(source_partitions.name, plan.added)
    return plan


__all__ = ["Registry", "RegistryError", "SourceSpec", "SyncPlan", "load_registry", "plan_sync",
           "source_partitions", "sync_partitions"]
