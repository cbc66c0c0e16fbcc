"""The real webserver, started from workspace.yaml on loopback, answers GraphQL with the assets,
their `source` partitions and the lineage edge raw_records -> merged_prompts."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import REPO

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webserver(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "POSTTRAIN_STORAGE": str(tmp_path / "storage")}
    subprocess.run([sys.executable, "-m", "partitions", "sync"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    exe = Path(sys.executable).with_name("dagster-webserver")
    log = open(tmp_path / "webserver.log", "w")
    proc = subprocess.Popen([str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError("webserver exited:\n" + (tmp_path / "webserver.log").read_text())
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("webserver did not answer in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
    data = graphql(webserver, QUERY)
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"raw_records", "merged_prompts"} <= set(nodes)
    keys = ["gsm8k", "hh_rlhf_harmless_base", "awesome_chatgpt_prompts", "self_instruct",
            "oasst_en", "oasst2_labelled"]
    for name in ("raw_records", "merged_prompts"):
        n = nodes[name]
        assert n["groupName"] == "ingest"
        assert n["partitionDefinition"]["type"] == "DYNAMIC"
        assert n["partitionDefinition"]["dimensionTypes"][0]["dynamicPartitionsDefinitionName"] == "source"
        assert n["partitionKeys"] == keys
    assert [d["path"] for d in nodes["merged_prompts"]["dependencyKeys"]] == [["raw_records"]]
    assert nodes["raw_records"]["dependencyKeys"] == []
    checks = {c["name"]: c["blocking"] for c in nodes["merged_prompts"]["assetChecksOrError"]["checks"]}
    assert checks == {"row_accounting": True, "all_prompt_id_unique": False, "required_columns": False}
    sensors = {s["name"]: s["sensorState"]["status"] for s in data["sensorsOrError"]["results"]}
    assert sensors == {"sources_registry_sensor": "RUNNING"}
