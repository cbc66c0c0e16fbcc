"""What the sources registry validates, registered by its owners: importing them registers the adapters'
declarations (ingest/adapters.py), the magpie generator's config (magpie/generator_config.py) and the
label filter's parser (common/label_filter.py). `partitions` imports no stage; a process that parses a
registry calls `load_plugins()` first (definitions.py, `python -m partitions`, the tests' conftest), and
a registry parsed without it fails loudly (partitions.registry.require_registrations)."""

from __future__ import annotations


def load_plugins() -> tuple:
    """Import the owners' registrations (idempotent: a module registers once per process); returns the modules."""
    from .common import label_filter
    from .ingest import adapters
    from .magpie import generator_config

    return label_filter, adapters, generator_config
