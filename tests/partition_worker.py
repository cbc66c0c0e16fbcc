"""Run by test_partition_runs in a subprocess: materialise raw_records + merged_prompts of one source
(raw_records limited to LIMIT rows per file) in the instance at $DAGSTER_HOME, tagged
posttrain/test=NAME. With GATE, merged_prompts' output waits, before it is written, until the file
GATE exists: the test's known point (raw_records written, merged_prompts not yet).

    python -m tests.partition_worker STORAGE_ROOT REGISTRY SOURCE LIMIT NAME [GATE]
"""

import os
import sys
import time

import dagster as dg

from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.storage import ParquetIOManager

from .helpers import resources_for


class GatedIOManager(ParquetIOManager):
    gate: str = ""

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if self.gate and context.asset_key == merged_prompts.key:
            print(f"at the gate: run {context.run_id}", flush=True)
            deadline = time.monotonic() + 300
            while not os.path.exists(self.gate):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the test never opened the gate {self.gate}")
                time.sleep(0.05)
        super().handle_output(context, obj)


def main(root: str, registry: str, source: str, limit: str, name: str, gate: str = "") -> None:
    resources = resources_for(root, registry)
    resources["io_manager"] = GatedIOManager(storage=resources["storage"], gate=gate)
    res = dg.materialize([raw_records, merged_prompts], partition_key=source, instance=dg.DagsterInstance.get(),
                         resources=resources, tags={"posttrain/test": name}, raise_on_error=False,
                         run_config={"ops": {"raw_records": {"config": {"limit": int(limit)}}}})
    print(f"run {res.run_id} success={res.success}", flush=True)
    sys.exit(0 if res.success else 1)


if __name__ == "__main__":
    main(*sys.argv[1:7])
