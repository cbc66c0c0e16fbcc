"""Run by test_scoring in a subprocess that the test SIGKILLs mid-way.

    python -m tests.score_worker STORAGE_ROOT REGISTRY SOURCE RUN_CONFIG_JSON
"""

import json
import sys

import dagster as dg

from posttrain_assets.scoring.assets import difficulty_scores

from .helpers import resources_for, upstream_specs


def main(root: str, registry: str, source: str, run_config: str) -> None:
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions("source", [source])
        dg.materialize(upstream_specs("cot_records", "sft_records") + [difficulty_scores],
                       selection=[difficulty_scores], partition_key=source, instance=inst,
                       resources=resources_for(root, registry), run_config=json.loads(run_config))


if __name__ == "__main__":
    main(*sys.argv[1:5])
