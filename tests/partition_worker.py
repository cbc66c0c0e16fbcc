"""Run by test_partition_runs in a subprocess: materialise raw_records + merged_prompts of one source
(raw_records limited to LIMIT rows per file) in the instance at $DAGSTER_HOME, tagged
posttrain/test=NAME. With `gate`, merged_prompts' output waits, before it is written, for a line on
stdin: the test's known point (raw_records written, merged_prompts not yet), opened by an explicit
signal (a blocking read, no timer).

    python -m tests.partition_worker STORAGE_ROOT REGISTRY SOURCE LIMIT NAME [gate]
"""

import sys

import dagster as dg

from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.storage import ParquetIOManager

from .helpers import resources_for


class GatedIOManager(ParquetIOManager):
    gate: bool = False

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if self.gate and context.asset_key == merged_prompts.key:
            print(f"at the gate: run {context.run_id}", flush=True)
            if sys.stdin.readline() != "open\n":  # blocks until the test writes the line (or closes stdin)
                raise RuntimeError("the test closed stdin without opening the gate")
        super().handle_output(context, obj)


def main(root: str, registry: str, source: str, limit: str, name: str, gate: str = "") -> None:
    resources = resources_for(root, registry)
    resources["io_manager"] = GatedIOManager(storage=resources["storage"], gate=gate == "gate")
    res = dg.materialize([raw_records, merged_prompts], partition_key=source, instance=dg.DagsterInstance.get(),
                         resources=resources, tags={"posttrain/test": name}, raise_on_error=False,
                         run_config={"ops": {"raw_records": {"config": {"limit": int(limit)}}}})
    print(f"run {res.run_id} success={res.success}", flush=True)
    sys.exit(0 if res.success else 1)


if __name__ == "__main__":
    main(*sys.argv[1:7])
