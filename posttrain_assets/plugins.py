"""What the sources registry validates, registered by its owners: importing them registers the adapters'
declarations (ingest/adapters.py), the magpie generator's config (magpie/generator_config.py) and the
label filter's parser (common/label_filter.py) and the hygiene rules (hygiene/rules.py). `partitions` imports no stage; importing
`posttrain_assets` calls `load_plugins()` (the package __init__), so every process that uses a stage
has them, and `python -m partitions` imports this module; a registry parsed without them fails loudly
(partitions.registry.require_registrations)."""

from __future__ import annotations


def load_plugins() -> tuple:
    """Import the owners' registrations (idempotent: a module registers once per process); returns the modules."""
    from .common import label_filter
    from .hygiene import rules
    from .ingest import adapters
    from .magpie import generator_config

    return label_filter, adapters, generator_config, rules
