"""`make ui` + Lineage -> "Materialize all" -> All -> "Launch backfill" on the bundled registry, driven
in Debian's Chromium by Playwright like tests/test_ui.py; logs the backfill's runs until it ends and
its wall time (not a test: minutes of the whole graph). `python -m bench.ui_backfill [WORKDIR]`"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import dagster_dev
from tests.test_ui import graphql, BACKFILLS
from playwright.sync_api import sync_playwright, expect

REPO = Path(__file__).resolve().parents[1]
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
with dagster_dev(base, env) as url:
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
    last = None
    while True:
        (bf,) = graphql(url, BACKFILLS)["partitionBackfillsOrError"]["results"]
        st = (bf["status"], sorted((r["status"]) for r in bf["runs"]))
        if st != last:
            note(f"{(time.monotonic()-t0)/60:.1f} min {bf['status']} runs={len(bf['runs'])} {dict((s, st[1].count(s)) for s in set(st[1]))}")
            last = st
        if bf["status"] not in ("REQUESTED", "CANCELING"):
            break
        time.sleep(10)
    note(f"done in {(time.monotonic()-t0)/60:.1f} min: {bf['status']}")
    json.dump(bf, open(base / "backfill.json", "w"), indent=1)
