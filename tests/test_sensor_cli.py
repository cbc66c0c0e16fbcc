"""Registry -> partitions: the sensor and the `python -m partitions` CLI (real instances)."""

import os
import subprocess
import sys

import dagster as dg
import yaml

from posttrain_assets.sensors import sources_registry_sensor
from resources.sources import SourceRegistryResource

from .conftest import BUNDLED_REGISTRY, REPO
from .helpers import write_registry

KEYS = ["gsm8k", "hh_rlhf_harmless_base", "awesome_chatgpt_prompts", "self_instruct", "oasst_en",
        "oasst2_labelled", "magpie_smollm2", "helpsteer", "helpsteer2", "oasst2_ja_edited"]


def evaluate(instance, registry_path):
    ctx = dg.build_sensor_context(instance=instance,
                                  resources={"registry": SourceRegistryResource(path=str(registry_path))})
    result = sources_registry_sensor(ctx)
    # what the daemon does with the requests
    if isinstance(result, dg.SensorResult):
        for req in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_sensor_adds_new_keys_and_never_removes(instance, tmp_path):
    instance.add_dynamic_partitions("source", ["retired_source"])
    first = evaluate(instance, BUNDLED_REGISTRY)
    assert isinstance(first, dg.SensorResult)
    (req,) = first.dynamic_partitions_requests
    assert list(req.partition_keys) == KEYS
    assert sorted(instance.get_dynamic_partitions("source")) == sorted(KEYS + ["retired_source"])
    again = evaluate(instance, BUNDLED_REGISTRY)
    assert isinstance(again, dg.SkipReason) and again.skip_message == "10 sources, all present"

    data = yaml.safe_load(BUNDLED_REGISTRY.read_text())
    src = dict(data["sources"][0], key="gsm8k_test")
    src["loader"] = {"path": str(REPO / "posttrain_assets/sample_data/gsm8k/train_300.jsonl")}
    reg = write_registry(tmp_path / "s.yaml", [src])
    third = evaluate(instance, reg)
    assert list(third.dynamic_partitions_requests[0].partition_keys) == ["gsm8k_test"]
    assert "retired_source" in instance.get_dynamic_partitions("source")  # kept
    assert "gsm8k" in instance.get_dynamic_partitions("source")


def test_sensor_skips_on_invalid_registry(instance, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - key: x\n    kind: nope\n")
    result = evaluate(instance, bad)
    assert isinstance(result, dg.SkipReason)
    assert "registry invalid, nothing synced" in result.skip_message and "field 'kind'" in result.skip_message
    assert instance.get_dynamic_partitions("source") == []


def cli(*args, home, registry=None):
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cmd = [sys.executable, "-m", "partitions", *args] + (["--registry", str(registry)] if registry else [])
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_sync_list_validate(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = cli("sync", home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"added 10 source partitions: {', '.join(KEYS)}; 0 already present"
    out = cli("sync", home=home)
    assert out.stdout.strip() == "added 0 source partitions: -; 10 already present"
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
        assert inst.get_dynamic_partitions("source") == KEYS
    out = cli("list", home=home)
    assert out.stdout.count("partition present") == 10
    out = cli("validate", home=home)
    assert out.returncode == 0 and out.stdout.strip().endswith("10 sources, valid")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - key: x\n    kind: sft\n    licence: MIT\n")
    out = cli("validate", home=home, registry=bad)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad}: source 'x': field 'loader': required: a mapping " \
                                 "with 'path' (local file/glob) or 'hub' (dataset id)"
