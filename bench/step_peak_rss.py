"""Peak RSS of one in-process materialisation: one process per step, as one pod per step on
Kubernetes (the numbers behind deploy/k8s/steps.yaml's memory limits). Upstream partitions must
already be in $POSTTRAIN_STORAGE; $DAGSTER_HOME keeps the `source` partitions between calls.

    python -m bench.step_peak_rss gsm8k raw_records merged_prompts
    python -m bench.step_peak_rss "" dedup_clusters dedup_cluster_report dedup_summary   # global step
"""

import json
import resource
import sys
import time

import dagster as dg

from posttrain_assets.definitions import all_assets, defs


def main(argv: list[str]) -> dict:
    part, selection = (argv[0] or None), argv[1:]
    inst = dg.DagsterInstance.get()
    if part and part not in inst.get_dynamic_partitions("source"):
        inst.add_dynamic_partitions("source", [part])
    start = time.time()
    res = dg.materialize(all_assets, selection=selection, partition_key=part, instance=inst, resources=defs.resources)
    return {"selection": selection, "partition": part, "success": res.success,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "seconds": round(time.time() - start, 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
