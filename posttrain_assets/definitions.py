"""The posttrain code location: every asset, check, job, sensor and resource."""


import dagster as dg

from partitions import source_partitions
from resources.sources import SourceRegistryResource
from resources.storage import ParquetIOManager, StorageResource

from . import ingest
from .sensors import sources_registry_sensor

all_assets = dg.load_assets_from_modules([ingest])
all_checks = dg.load_asset_checks_from_modules([ingest])

#: Every per-source asset, one run per `source` partition (what the demo and backfills run).
per_source_job = dg.define_asset_job(
    "per_source_job", selection=dg.AssetSelection.groups(ingest.GROUP),
    partitions_def=source_partitions,
    description="Materialise every per-source asset for one source partition.",
)


def build_resources() -> dict:
    storage = StorageResource()
    return {
        "storage": storage,
        "io_manager": ParquetIOManager(storage=storage),
        "registry": SourceRegistryResource(),
    }


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[per_source_job],
    sensors=[sources_registry_sensor],
    resources=build_resources(),
)
