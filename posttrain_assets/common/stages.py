"""Which sources a model stage works on: the registry's `model_stages` (partitions/registry.py; by
default every stage, only `steerlm` for kind `attributes`). A stage that leaves a source out loads no
model and writes an empty table; the rows it loaded count as removed with NOT_IN_MODEL_STAGES."""

from typing import Callable

from resources.reasons import Reason

#: the removal reason of a row whose source does not list the stage in `model_stages`
NOT_IN_MODEL_STAGES = Reason.NOT_IN_MODEL_STAGES


def source_skipped(registry, key: str, stage: str, log=None) -> bool:
    """Whether model stage `stage` leaves source `key` out (logged when it does). A partition the
    registry does not list is worked on: its tables were written by other means (the ingest and
    records assets of the graph stop on an unknown source key before any model stage runs)."""
    spec = registry.load().find(key)  # an entry or one of its shards (a shard key: its source's stages)
    if spec is None:
        return False
    if spec.runs_stage(stage):
        return False
    if log is not None:
        log(f"source {key!r} (kind {spec.kind}) does not take the {stage} stage (registry model_stages: "
            f"{', '.join(spec.model_stages) if spec.model_stages is not None else 'the kind default'}): "
            f"no model is loaded, its rows are counted removed ({NOT_IN_MODEL_STAGES})")
    return True


def stage_items(items: list, skipped: bool, sample: Callable[[list], list]) -> tuple[list, dict[str, int]]:
    """The items a stage works on and the removal counts of the others: none, every item removed as
    NOT_IN_MODEL_STAGES, when the stage leaves the source out; else `sample(items)`, the rest removed
    as not_sampled (a size limit: counted, not written as rejects)."""
    if skipped:
        return [], ({NOT_IN_MODEL_STAGES: len(items)} if items else {})
    picked = sample(items)
    return picked, ({Reason.NOT_SAMPLED: len(items) - len(picked)} if len(items) > len(picked) else {})
