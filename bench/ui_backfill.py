"""`make ui` + Lineage -> "Materialize all" -> All -> "Launch backfill" on the bundled registry, driven
in Debian's Chromium by Playwright like tests/test_ui.py; logs the backfill's runs until it ends and
its wall time (not a test: minutes of the whole graph). `python -m bench.ui_backfill [WORKDIR [--report]]`
(--report: per run and per asset step seconds of the last measurement in WORKDIR)"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import BACKFILL_DONE, dagster_dev
from tests.test_ui import graphql, BACKFILLS
from playwright.sync_api import sync_playwright, expect

REPO = Path(__file__).resolve().parents[1]

def report(home: Path) -> str:
    """Per run: partition, queued -> start -> end; per step kind: summed seconds (from the event log)."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg
    from collections import defaultdict
    inst = dg.DagsterInstance.get()
    recs = list(inst.get_run_records())
    t0 = min(r.create_timestamp.timestamp() for r in recs)
    recs.sort(key=lambda r: r.start_time or float('inf'))
    lines, per_step = [], defaultdict(float)
    for r in recs:
        starts = {}
        for e in inst.all_logs(r.dagster_run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}):
            if e.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                starts[e.step_key] = e.timestamp
            elif e.step_key in starts:
                per_step[e.step_key.split("[")[0]] += e.timestamp - starts[e.step_key]
        steps = sorted(starts)
        if r.start_time is None:
            lines.append(f"{r.dagster_run.tags.get('dagster/partition', '-'):18} {r.dagster_run.status.value}")
            continue
        lines.append(f"{r.dagster_run.tags.get('dagster/partition', '-'):18} start {r.start_time - t0:7.1f}s "
                     f"end {(r.end_time or 0) - t0:7.1f}s  ({(r.end_time or 0) - r.start_time:6.1f}s) {len(steps)} steps "
                     f"{r.dagster_run.status.value}")
    lines.append("summed step seconds by asset:")
    lines += [f"  {k:32} {v:7.1f}" for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


if len(sys.argv) > 2 and sys.argv[2] == "--report":  # the report of an earlier measurement
    print(report(Path(sys.argv[1]) / "home")); sys.exit(0)
base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/posttrain-ui-backfill")
for d in ("home", "storage"):
    shutil.rmtree(base / d, ignore_errors=True)
(base / "home").mkdir(parents=True)
shutil.copy(REPO / "deploy" / "dagster.yaml", base / "home" / "dagster.yaml")
env = {**os.environ, "DAGSTER_HOME": str(base / "home"), "POSTTRAIN_STORAGE": str(base / "storage"), "HF_HUB_OFFLINE": "1"}
env.pop("POSTTRAIN_SOURCES", None)
py = sys.executable
subprocess.run([str(Path(py).parent / "dagster"), "sensor", "stop", "posttrain_automation_sensor", "-w", "workspace.yaml"], cwd=REPO, env=env, check=True, capture_output=True)
subprocess.run([py, "-m", "partitions", "sync"], cwd=REPO, env=env, check=True)
log = open(base / "measure.log", "a")
def note(msg):
    line = f"{time.strftime('%H:%M:%S')} load={os.getloadavg()[0]:.1f} {msg}"
    print(line, flush=True); log.write(line + "\n"); log.flush()
with dagster_dev(base, env) as dev:
    url = dev.url
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(600_000)
        page.goto(f"{url}/asset-groups")
        page.get_by_role("button", name="Materialize all").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("All", exact=True).click()
        expect(dialog).to_contain_text("10 partitions")
        page.screenshot(path=str(base / "dialog.png"))
        dialog.get_by_role("button", name="Launch backfill").click()
        t0 = time.monotonic(); note("launched")
        expect(dialog).to_be_hidden()
        b.close()
    def progress(line):  # each run's start and end, as the run workers report them
        if " - RUN_START - " in line or " - RUN_SUCCESS - " in line or " - RUN_FAILURE - " in line:
            note(f"{(time.monotonic()-t0)/60:.1f} min {line.split(' - ', 2)[2][:110]}")
    dev.expect_line(BACKFILL_DONE, 3 * 3600, on_line=progress)
    (bf,) = graphql(url, BACKFILLS)["partitionBackfillsOrError"]["results"]
    note(f"done in {(time.monotonic()-t0)/60:.1f} min: {bf['status']}")
    json.dump(bf, open(base / "backfill.json", "w"), indent=1)
note("\n" + report(base / "home"))
