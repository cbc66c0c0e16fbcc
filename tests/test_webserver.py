"""`dagster dev -w workspace.yaml` (webserver + daemon) on loopback, driven over GraphQL the way the
UI drives it: the assets, their `source` partitions and lineage edge (a backfill launched from
the UI itself: tests/test_ui.py)."""

import os
import subprocess
import sys
import time

import pytest
import requests

from .conftest import REPO
from .helpers import dagster_dev

QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    partitionKeys
    partitionDefinition { type name dimensionTypes { dynamicPartitionsDefinitionName } }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
  sensorsOrError(repositorySelector: {repositoryName: "__repository__", repositoryLocationName: "posttrain"}) { ... on Sensors { results { name sensorState { status } } } }
}
"""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ui")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "POSTTRAIN_STORAGE": str(tmp_path / "storage")}
    subprocess.run([sys.executable, "-m", "partitions", "sync"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    with dagster_dev(tmp_path, env) as dev:
        yield dev.url, tmp_path / "storage"


def post(url, query, variables=None):
    r = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    assert r.ok, r.text
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def graphql(url, query):
    # the code location loads in the background: retry until the assets are there
    deadline = time.monotonic() + 90
    while True:
        r = requests.post(f"{url}/graphql", json={"query": query}, timeout=30)
        assert r.ok, r.text
        body = r.json()
        assert "errors" not in body, body["errors"]
        if body["data"]["assetNodes"] or time.monotonic() > deadline:
            return body["data"]
        time.sleep(1)


def test_graph_partitions_and_lineage_over_graphql(webserver):
    data = graphql(webserver[0], QUERY)
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"raw_records", "merged_prompts"} <= set(nodes)
    keys = ["gsm8k", "hh_rlhf_harmless_base", "awesome_chatgpt_prompts", "self_instruct",
            "oasst_en", "oasst2_labelled", "magpie_smollm2", "helpsteer", "helpsteer2", "oasst2_ja_edited"]
    for name in ("raw_records", "merged_prompts"):
        n = nodes[name]
        assert n["groupName"] == "ingest"
        assert n["partitionDefinition"]["type"] == "DYNAMIC"
        assert n["partitionDefinition"]["dimensionTypes"][0]["dynamicPartitionsDefinitionName"] == "source"
        assert n["partitionKeys"] == keys
    assert [d["path"] for d in nodes["merged_prompts"]["dependencyKeys"]] == [["raw_records"]]
    # a synthetic source's raw rows are its generator's partition
    assert nodes["raw_records"]["dependencyKeys"] == [{"path": ["magpie_instructions"]}]
    checks = {c["name"]: c["blocking"] for c in nodes["merged_prompts"]["assetChecksOrError"]["checks"]}
    assert checks == {"row_accounting": True, "all_prompt_id_unique": False, "required_columns": False}
    sensors = {s["name"]: s["sensorState"]["status"] for s in data["sensorsOrError"]["results"]}
    assert sensors == {"sources_registry_sensor": "RUNNING", "posttrain_automation_sensor": "RUNNING"}
