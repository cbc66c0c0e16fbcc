"""Materialises one LLM stage of `tests/stage_cases.py` in a subprocess; the reliability tests kill
it mid-stage: its LLM resource's checkpoint hook (`resources.faults`, injected here) SIGKILLs the
process right after its KILL_AFTER-th chunk committed to the LLM cache.

    python -m tests.stage_worker STAGE STORAGE_ROOT KILL_AFTER
"""

import sys

import dagster as dg

from resources.faults import LLM_CACHE_CHUNK
from resources.llm import LLMResource

from .helpers import killed_after
from .stage_cases import STAGES


def main(stage: str, root: str, kill_after: int) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        STAGES[stage].materialise(root, instance, llm=killed_after(LLMResource, kill_after, LLM_CACHE_CHUNK))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
