"""The README's main job end to end: every asset for every bundled source, then the summary."""

import os
import re
import subprocess
import sys

import dagster as dg

from .conftest import REPO


def test_demo_materialises_everything_and_prints_summary(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           "POSTTRAIN_STORAGE": str(tmp_path / "storage")}
    out = subprocess.run([sys.executable, "-m", "posttrain_assets.demo"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    table = {ln.split()[0]: ln.split() for ln in lines if re.match(r"^[a-z0-9_]+\s+(cot|sft|prompt|preference|attributes)\s", ln)}
    assert table["gsm8k"][2:8] == ["300", "0", "300", "300", "0", "0"]
    assert table["hh_rlhf_harmless_base"][2:9] == ["300", "0", "300", "299", "0", "1", "empty_response=1"]
    assert table["awesome_chatgpt_prompts"][2:9] == ["211", "1", "210", "210", "0", "0", "csv_extra_columns=1"]
    assert table["oasst2_labelled"][2:9] == ["60", "0", "130", "129", "1", "0", "exact_duplicate=1"]
    assert len(table) == 6
    assert "6 sources, 1,450 merged prompts" in out.stdout
    assert f"DuckDB:    {tmp_path / 'storage' / 'catalog.duckdb'}" in out.stdout
    # the runs and materialisations are in the instance the UI reads
    assert (tmp_path / "home" / "dagster.yaml").read_text().startswith("# Instance config")
    with _instance(tmp_path / "home") as inst:
        for asset in ("raw_records", "merged_prompts"):
            assert inst.get_materialized_partitions(dg.AssetKey(asset)) == set(table)


def _instance(home):
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
