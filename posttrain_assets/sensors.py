"""Keep the `source` partitions in step with the sources registry."""


import dagster as dg

from partitions import plan_sync, source_partitions
from partitions.registry import RegistryError
from resources.sources import SourceRegistryResource


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Adds a `source` partition for every registry key (a sharded source: every shard "
                       "key) that has none. Never "
                       "removes partitions: keys dropped from the registry keep their data.")
def sources_registry_sensor(context: dg.SensorEvaluationContext, registry: SourceRegistryResource):
    try:
        reg = registry.load()
        # a sharded source's keys are counted from its files here (a missing file, > 100k partitions)
        plan = plan_sync(context.instance.get_dynamic_partitions(source_partitions.name), reg)
    except RegistryError as exc:
        return dg.SkipReason(f"registry invalid, nothing synced: {exc}")
    if plan.orphaned:
        context.log.warning(f"partitions not in the registry (kept): {', '.join(plan.orphaned)}")
    if not plan.added:
        return dg.SkipReason(f"{len(plan.present)} sources, all present")
    context.log.info(f"adding source partitions: {', '.join(plan.added)}")
    return dg.SensorResult(dynamic_partitions_requests=[source_partitions.build_add_request(plan.added)])
