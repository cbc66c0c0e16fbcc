"""The Dagster UI as a user drives it, in a real browser (Debian's Chromium through Playwright):
`dagster dev` (webserver + daemon) on loopback, Lineage -> "Materialize all..." -> All partitions ->
"Launch backfill"; the daemon runs the whole graph (every asset, the LLM ones at the embedded
engine's CPU sizes) over a small registry of two bundled sources through the local run queue
(deploy/dagster.yaml); then an asset's partition page shows its row count, metadata preview and
checks. Screenshots go to the test's temp dir (ui-*.png)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from posttrain_assets.definitions import defs

from .conftest import REPO
from .helpers import BACKFILL_DONE, SAMPLE, dagster_dev, write_registry

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"

#: two small bundled sources: a CoT source (scoring, math-verify) and an attributes source (the SteerLM
#: attribute model needs one to train on); loader.limit keeps the LLM work to a few minutes on 2 cores
SOURCES = [
    {"key": "gsm8k", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
     "loader": {"path": str(SAMPLE / "gsm8k" / "train_300.jsonl"), "limit": 20}},
    {"key": "helpsteer2", "kind": "attributes", "adapter": "helpsteer", "licence": "CC-BY-4.0",
     "loader": {"path": str(SAMPLE / "helpsteer2" / "helpsteer2_train_head100.jsonl"), "limit": 30}},
]
#: the backfill's overall limit on a shared 2-core machine (it takes a few minutes when the cores are free)
BACKFILL_TIMEOUT_S = 45 * 60

BACKFILLS = """{ partitionBackfillsOrError { ... on PartitionBackfills { results {
  id status numPartitions runs(limit: 100) { id status tags { key value } } } } } }"""
ASSETS = """{ assetNodes { assetKey { path } isPartitioned
  partitionStats { numMaterialized numPartitions numFailed }
  assetMaterializations(limit: 10) { runId } } }"""


def graphql(url: str, query: str) -> dict:
    r = requests.post(f"{url}/graphql", json={"query": query}, timeout=60)
    assert r.ok, r.text
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def wait_for_backfill(dev) -> dict:
    """The one backfill of the instance, once the backfill daemon has logged its final status."""
    dev.expect_line(BACKFILL_DONE, BACKFILL_TIMEOUT_S)
    (backfill,) = graphql(dev.url, BACKFILLS)["partitionBackfillsOrError"]["results"]
    return backfill


#: how often the daemon looks at the backfill and at the run queue (Dagster's 30 s and 5 s): when the
#: next step's runs are submitted and started, not what they do; at 30 s most of this small backfill
#: (six steps of the graph, each waiting for the previous one's runs) was the daemon's wait
BACKFILL_INTERVAL_S, DEQUEUE_INTERVAL_S = 5, 1


@pytest.fixture
def ui(tmp_path):
    """`dagster dev` with a temp instance (deploy/dagster.yaml, the daemon's intervals shortened),
    storage root and a two-source registry whose partitions exist. The automation sensor is stopped
    first (as a user would toggle it off), so that only the backfill materialises anything."""
    home = tmp_path / "home"
    home.mkdir()
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    config["run_coordinator"].setdefault("config", {})["dequeue_interval_seconds"] = DEQUEUE_INTERVAL_S
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    registry = write_registry(tmp_path / "sources.yaml", SOURCES)
    site = str(Path(__file__).parent / "daemon_site")  # its sitecustomize sets the backfill interval
    env = {**os.environ, "DAGSTER_HOME": str(home), "POSTTRAIN_STORAGE": str(tmp_path / "storage"),
           "POSTTRAIN_SOURCES": str(registry), "POSTTRAIN_TEST_BACKFILL_INTERVAL_S": str(BACKFILL_INTERVAL_S),
           "PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
    dagster = str(Path(sys.executable).with_name("dagster"))
    for cmd in ([dagster, "sensor", "stop", "posttrain_automation_sensor", "-w", "workspace.yaml"],
                [sys.executable, "-m", "partitions", "sync"]):
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    with dagster_dev(tmp_path, env) as dev:
        yield dev


def test_materialize_all_from_the_lineage_page(ui, tmp_path):
    url = ui.url
    n_assets = len(defs.resolve_asset_graph().materializable_asset_keys)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(300_000)  # the code location loads in the background; the machine is shared
        expect = playwright.expect
        expect.set_options(timeout=120_000)

        def shot(name: str) -> None:
            page.screenshot(path=str(tmp_path / f"ui-{name}.png"), full_page=True)

        # Lineage -> "Materialize all..." -> All -> "Launch backfill"
        page.goto(f"{url}/asset-groups")
        page.get_by_role("button", name="Materialize all").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text(f"Launch runs to materialize {n_assets} assets")
        expect(dialog).to_contain_text("0 partitions")  # dynamic partitions: Custom, nothing chosen
        dialog.get_by_text("All", exact=True).click()
        expect(dialog).to_contain_text("2 partitions")
        shot("1-materialize-all")
        dialog.get_by_role("button", name="Launch backfill").click()
        expect(dialog).to_be_hidden()

        backfill = wait_for_backfill(ui)
        runs = backfill["runs"]
        assert (backfill["status"], backfill["numPartitions"]) == ("COMPLETED_SUCCESS", 2), backfill
        assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs), runs
        # runs per source (the daemon groups a source's ready assets into one run; how many depends on
        # when the global steps finish) and global ones (dedup, the attribute model, the export)
        partitions = {next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), None) for r in runs}
        assert partitions == {"gsm8k", "helpsteer2", None}

        # every asset materialised exactly once per partition (both sources; once if global), all by
        # the backfill's runs
        nodes = graphql(url, ASSETS)["assetNodes"]
        assert len(nodes) == n_assets
        run_ids = {r["id"] for r in runs}
        for n in nodes:
            name, mats = "/".join(n["assetKey"]["path"]), n["assetMaterializations"]
            assert len(mats) == (2 if n["isPartitioned"] else 1), name
            assert {m["runId"] for m in mats} <= run_ids, name
            if n["isPartitioned"]:
                assert n["partitionStats"] == {"numMaterialized": 2, "numPartitions": 2, "numFailed": 0}, name

        # the backfill's page: succeeded, every asset's row at 100%
        page.goto(f"{url}/runs/b/{backfill['id']}")
        expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible()
        expect(page.get_by_text("100% completed").first).to_be_visible()
        shot("2-backfill")

        # an asset's partition: its row count, the markdown preview (first GSM8K question), its checks
        page.goto(f"{url}/assets/merged_prompts?view=partitions&partition=gsm8k")
        metadata = {key: page.locator("tr", has=page.get_by_text(key, exact=True)).locator("td").nth(1)
                    for key in ("dagster/row_count", "rows_in", "rows_out", "rejected")}
        for key, value in (("dagster/row_count", "20"), ("rows_in", "20"), ("rows_out", "20"), ("rejected", "0")):
            expect(metadata[key]).to_have_text(value)  # loader.limit: 20 of the 300 bundled rows
        shot("3-partition")
        page.locator("tr", has=page.get_by_text("preview", exact=True)).get_by_text("[Show Markdown]").click()
        preview = page.get_by_role("dialog")
        expect(preview).to_contain_text("gsm8k:train_300:0")
        expect(preview).to_contain_text("Natalia sold clips to 48 of her friends in April")
        shot("4-preview")
        page.keyboard.press("Escape")

        page.goto(f"{url}/assets/merged_prompts?view=checks")
        expect(page.get_by_text("Checks (3)", exact=True)).to_be_visible()
        for check in ("row_accounting", "all_prompt_id_unique", "required_columns"):
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        expect(page.get_by_text("Succeeded", exact=True)).to_have_count(3)
        shot("5-checks")
        browser.close()
