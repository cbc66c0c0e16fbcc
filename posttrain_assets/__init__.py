"""The posttrain asset graph: one package per stage (posttrain_assets/<stage>/assets.py beside its pure
modules), `common/` shared pure code, `definitions.py` the code location.

Importing the package registers what the sources registry validates (the adapters' declarations, the
magpie generator's config, the label filter's parser: plugins.py), so every process that uses a stage
(the code location, a step subprocess, a test worker, a bench script) validates registries fully;
`partitions` imports no stage and refuses to validate before they are registered."""

from .plugins import load_plugins

load_plugins()
