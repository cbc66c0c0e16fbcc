"""The sources registry as a Dagster resource (path configurable from the launchpad or YAML)."""


import dagster as dg

from partitions.registry import Registry, SourceSpec, default_registry_path, load_registry


class SourceRegistryResource(dg.ConfigurableResource):
    """`path`: the sources registry YAML ("" = $POSTTRAIN_SOURCES, else partitions/sources.yaml)."""

    path: str = ""

    def resolved_path(self) -> str:
        return self.path or default_registry_path()

    def load(self) -> Registry:
        return load_registry(self.resolved_path())

    def get(self, key: str) -> SourceSpec:
        return self.load().get(key)
