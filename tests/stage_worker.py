"""Materialises one LLM stage of `tests/stage_cases.py` in a subprocess (the reliability tests SIGKILL
it mid-stage through POSTTRAIN_TEST_SIGKILL_AFTER_CHUNKS).

    python -m tests.stage_worker STAGE STORAGE_ROOT
"""

import sys

import dagster as dg

from .stage_cases import STAGES


def main(stage: str, root: str) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        STAGES[stage].materialise(root, instance)


if __name__ == "__main__":
    main(*sys.argv[1:3])
