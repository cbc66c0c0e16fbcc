"""One fault-injection hook for resumable work: a `Checkpoint`.

Loops that commit their work piece by piece (the LLM cache's chunks, the embedding chunks) call
`checkpoint(unit)` right after each piece is durably written. Production passes `no_checkpoint`
(nothing happens); a crash-recovery test passes a callable that kills the process at an exact
point (`tests/helpers.KillAfter`), so it knows exactly what is on disk. The hook is injected by the
caller through the resource that owns the loop (`LLMResource.checkpoint`,
`EmbeddingClient.checkpoint`), never read from the environment or a module-level counter."""

from typing import Protocol

#: the units a checkpoint is called after
LLM_CACHE_CHUNK = "llm_cache_chunk"  # a chunk of answers committed to the LLM cache
EMBEDDING_CHUNK = "embedding_chunk"  # a chunk of embeddings written to storage


class Checkpoint(Protocol):
    def __call__(self, unit: str) -> None: ...


def no_checkpoint(unit: str) -> None:
    """The default hook: nothing happens."""
