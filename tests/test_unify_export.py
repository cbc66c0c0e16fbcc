"""Record schemas (SFT / CoT / preference incl. the HelpSteer3 rule) and the Hugging Face export."""

import json

import dagster as dg
import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from partitions.registry import parse_registry
from posttrain_assets.ingest.adapters import helpsteer3_choice
from posttrain_assets.export.assets import hf_parquet
from posttrain_assets.export.hf_dataset import dataset_card, split_of, write_dataset
from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.records.unify import cot_from, preference_from, sft_from, split_reasoning
from resources.hub import HubResource, RemoteFile, git_blob_sha1, plan_upload, sha256_file
from resources.storage import ParquetStore

from .conftest import REPO
from .helpers import load_export, mat_metadata, no_contamination, resources_for

HS3 = REPO / "tests" / "data" / "helpsteer3_format.jsonl"


def merged_of(registry_entry: dict):
    spec = parse_registry({"sources": [{"licence": "x", **registry_entry}]}).sources[0]
    return merge_prompts(rows_to_table(load_rows(spec)), spec)


def test_split_reasoning_rules():
    assert split_reasoning("Add 2 and 3.\n#### 5") == ("Add 2 and 3.", "5", "gsm8k_marker")
    assert split_reasoning("<think>2+3 is 5</think> The answer is 5.") == ("2+3 is 5", "The answer is 5.", "think_tags")
    assert split_reasoning("So x = \\frac{1}{2}, i.e. \\boxed{\\frac{1}{2}}.") == \
        ("So x = \\frac{1}{2}, i.e. \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "boxed")
    assert split_reasoning("We try cases and the claim follows.") == ("We try cases and the claim follows.", "", "unsplit")


@pytest.mark.parametrize("score, expected", [(-3, ("r1", "r2", False)), (-2, ("r1", "r2", False)),
                                             (-1, ("r1", "r2", False)), (0, ("", "", True)),
                                             (1, ("r2", "r1", False)), (2, ("r2", "r1", False)),
                                             (3, ("r2", "r1", False))])
def test_helpsteer3_rule(score, expected):
    assert helpsteer3_choice(score, "r1", "r2") == expected


def test_helpsteer3_source_to_preference_records():
    res = merged_of({"key": "hs3", "kind": "preference", "adapter": "helpsteer3", "loader": {"path": str(HS3)}})
    assert (res.accounting.rows_in, res.accounting.rows_out) == (8, 7)
    (bad,) = res.issues
    assert (bad.reason, bad.source_row, bad.field) == ("bad_preference_score", 7, "overall_preference")
    table, issues = preference_from(res.table, "preference")
    rows = table.to_pylist()
    assert issues == [] and len(rows) == 7
    assert rows[0]["chosen"].startswith("Draw a fake tattoo") and rows[0]["rejected"].startswith("I'd rather")
    assert rows[6]["chosen"] == "Lima." and rows[6]["rejected"] == "Cusco."
    assert [r["tie"] for r in rows] == [False, False, False, True, False, False, False]
    assert rows[3]["chosen"] == rows[3]["rejected"] == ""
    assert [m["role"] for m in rows[4]["messages"]] == ["user", "assistant", "user"]  # multi-turn kept


def test_sft_best_reply_and_ranked_preference_pairs(bundled):
    spec = bundled.get("oasst_en")
    merged = merge_prompts(rows_to_table(load_rows(spec)), spec).table
    sft, sft_issues = sft_from(merged)
    reasons = {}
    for i in sft_issues:
        reasons[i.reason] = reasons.get(i.reason, 0) + 1
    assert sft.num_rows + len(sft_issues) == merged.num_rows
    assert set(reasons) == {"no_response", "not_best_reply"}
    first = [r for r in sft.to_pylist() if r["prompt"] == "How can I find the best 401k plan for my needs?"]
    assert len(first) == 1 and first[0]["answer"].startswith("The first step is to research your options.")
    assert first[0]["messages"][-1]["role"] == "assistant"
    pref, pref_issues = preference_from(merged, "sft")
    assert pref.num_rows + len(pref_issues) == merged.num_rows
    p = [r for r in pref.to_pylist() if r["prompt"] == "How can I find the best 401k plan for my needs?"][0]
    assert p["chosen"].startswith("The first step is to research your options.")  # rank 0
    assert p["rejected_id"] != p["all_prompt_id"]


def test_gsm8k_cot_records(bundled):
    spec = bundled.get("gsm8k")
    cot, issues = cot_from(merge_prompts(rows_to_table(load_rows(spec)), spec).table)
    assert cot.num_rows == 300 and issues == []
    r = cot.to_pylist()[0]
    assert r["answer"] == "72" and r["thinking"].startswith("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
    assert set(cot["split_rule"].to_pylist()) == {"gsm8k_marker"}


def _sft_table(n):
    return pa.table({"all_prompt_id": [f"s:{i}" for i in range(n)], "prompt": [f"question {i} " * 20 for i in range(n)],
                     "answer": [f"answer {i}" for i in range(n)], "source": ["s"] * n})


def test_export_shards_load_with_datasets(tmp_path):
    manifest = write_dataset({"sft": _sft_table(500)}, str(tmp_path), max_shard_bytes=20_000, test_fraction=0.2)
    train = [m for m in manifest if m["split"] == "train"]
    test = [m for m in manifest if m["split"] == "test"]
    assert len(train) > 1 and train[0]["path"] == f"data/sft/train-00000-of-{len(train):05d}.parquet"
    n_test = sum(s == "test" for s in split_of([f"s:{i}" for i in range(500)], 0.2))
    assert sum(m["rows"] for m in test) == n_test and 60 < n_test < 140
    card = dataset_card(manifest, [{"key": "s", "kind": "sft", "licence": "MIT", "sft": 500}], {"x": 1},
                        title="t", body="## Original README\nkept as is")
    (tmp_path / "README.md").write_text(card)
    front = yaml.safe_load(card.split("---")[1])
    assert front["configs"] == [{"config_name": "sft", "data_files": [
        {"split": "train", "path": "data/sft/train-*"}, {"split": "test", "path": "data/sft/test-*"}]}]
    assert card.rstrip().endswith("## Original README\nkept as is")
    ds = load_export(str(tmp_path), "sft", split="train")
    assert ds.num_rows == 500 - n_test
    assert load_export(str(tmp_path), "sft", split="test").num_rows == n_test
    # a re-export with fewer rows leaves no stale shards behind
    write_dataset({"sft": _sft_table(10)}, str(tmp_path), max_shard_bytes=10**9)
    assert sorted(p.name for p in (tmp_path / "data" / "sft").iterdir()) == ["train-00000-of-00001.parquet"]


def test_upload_plan_without_network(tmp_path):
    (tmp_path / "data" / "sft").mkdir(parents=True)
    (tmp_path / "data" / "sft" / "train-00000-of-00002.parquet").write_bytes(b"same shard")
    (tmp_path / "data" / "sft" / "train-00001-of-00002.parquet").write_bytes(b"new shard")
    (tmp_path / "README.md").write_text("card v2")
    remote = [RemoteFile("data/sft/train-00000-of-00002.parquet",
                         sha256=sha256_file(tmp_path / "data/sft/train-00000-of-00002.parquet")),
              RemoteFile("data/sft/train-00001-of-00002.parquet", sha256="0" * 64),
              RemoteFile("data/sft/train-00000-of-00001.parquet", sha256="1" * 64),  # from an older export
              RemoteFile("README.md", blob_id=git_blob_sha1(b"card v1")),
              RemoteFile(".gitattributes", blob_id="abc")]
    local = ["data/sft/train-00000-of-00002.parquet", "data/sft/train-00001-of-00002.parquet", "README.md"]
    plan = plan_upload(str(tmp_path), local, remote)
    assert plan.as_dict() == {"upload": ["README.md", "data/sft/train-00001-of-00002.parquet"],
                              "skip": ["data/sft/train-00000-of-00002.parquet"],
                              "delete": ["data/sft/train-00000-of-00001.parquet"]}
    same_card = [RemoteFile("README.md", blob_id=git_blob_sha1(b"card v2"))]
    assert plan_upload(str(tmp_path), ["README.md"], same_card).skip == ["README.md"]
    assert HubResource().ready() == (False, "local export only: set the hub resource's repo_id (and HF_TOKEN) to upload")
    assert HubResource(repo_id="me/ds").ready()[1] == "local export only: HF_TOKEN is not set in the environment (repo me/ds)"


def test_hf_parquet_asset_excludes_ties_by_default(tmp_path, instance, monkeypatch):
    """The asset over real upstream files (HelpSteer3-format preference rows with one tie)."""
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    res = merged_of({"key": "hs3", "kind": "preference", "adapter": "helpsteer3", "loader": {"path": str(HS3)}})
    pref, _ = preference_from(res.table, "preference")
    from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA

    store.write(pref, store.path("preference_records", "hs3"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "hs3"))
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", "hs3"))
    no_contamination(store, ["hs3"])
    reg = tmp_path / "s.yaml"
    reg.write_text(yaml.safe_dump({"sources": [{"key": "hs3", "kind": "preference", "adapter": "helpsteer3",
                                                "licence": "CC0", "loader": {"path": str(HS3)}}]}))
    instance.add_dynamic_partitions("source", ["hs3"])
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_logged")
    upstream = [dg.AssetSpec(k, partitions_def=dg.DynamicPartitionsDefinition(name="source"))
                for k in ("sft_records", "cot_records", "preference_records", "contamination")]
    hub = HubResource(token=dg.EnvVar("HF_TOKEN"))  # token set, no repo: local only, never shown
    run = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance,
                         resources={**resources_for(root, reg), "hub": hub})
    md = mat_metadata(run, "hf_parquet")
    logs = [e.message for e in instance.all_logs(run.run_id)]
    assert not any("hf_secret" in (m or "") for m in logs)
    assert (md["rows_preference"], md["ties_total"], md["ties_excluded"]) == (6, 1, 1)
    assert md["hub"] == "local only" and md["hub_status"].startswith("local export only")
    assert "hf_secret" not in json.dumps({k: str(v) for k, v in md.items()})
    ds = load_export(str(tmp_path / "storage" / "hf_export"), "preference", split="train")
    assert ds.num_rows == 6 and "tie" not in ds.column_names
    run = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance,
                         resources=resources_for(root, reg),
                         run_config={"ops": {"hf_parquet": {"config": {"include_ties": True}}}})
    assert mat_metadata(run, "hf_parquet")["rows_preference"] == 7
    # preference_format trl: chosen / rejected are each side's conversation (context + the response)
    dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance, resources=resources_for(root, reg),
                   run_config={"ops": {"hf_parquet": {"config": {"preference_format": "trl"}}}})
    trl = load_export(str(tmp_path / "storage" / "hf_export"), "preference", split="train")
    pref = pref.filter(pc.invert(pref["tie"]))
    assert trl.num_rows == 6 and "prompt" not in trl.column_names
    assert trl["chosen"] == pref["chosen_messages"].to_pylist() and trl["rejected"][0][-1]["role"] == "assistant"


def test_hub_upload_request_without_network(tmp_path, monkeypatch):
    """The Hub cannot be reached here: a recording stand-in for HfApi checks the requests we build
    (repo creation, the commit's add / delete operations, the token passed, never printed)."""
    import huggingface_hub
    from huggingface_hub.hf_api import RepoFile

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def list_repo_tree(self, repo_id, **kw):
            return [RepoFile(path="README.md", size=3, blob_id=git_blob_sha1(b"old"), lfs=None, oid="x")]

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["repo_type"], kw["private"], kw["exist_ok"]))

        def create_commit(self, repo_id, operations, **kw):
            calls.append(("commit", repo_id, sorted((type(o).__name__, o.path_in_repo) for o in operations)))
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    (tmp_path / "data" / "sft").mkdir(parents=True)
    (tmp_path / "data" / "sft" / "train-00000-of-00001.parquet").write_bytes(b"shard")
    (tmp_path / "README.md").write_text("new")
    hub = HubResource(repo_id="me/ds", token="hf_x")
    assert hub.ready() == (True, "")
    plan = plan_upload(str(tmp_path), ["data/sft/train-00000-of-00001.parquet", "README.md"], hub.remote_files())
    assert hub.upload(str(tmp_path), plan, "msg") == "https://hub/commit/1"
    assert calls[-2:] == [("create_repo", "me/ds", "dataset", True, True),
                          ("commit", "me/ds", [("CommitOperationAdd", "README.md"),
                                               ("CommitOperationAdd", "data/sft/train-00000-of-00001.parquet")])]
    assert ("init", "hf_x") in calls


def test_hf_parquet_exports_the_synthetic_configs_where_materialised(tmp_path, instance):
    """`evol` (conversation format, split with its seed) and `generated` (problem, solution, answer,
    pass rate) are read where the on-demand synthesis assets exist; missing sources are listed."""
    from posttrain_assets.records.unify import COT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA
    from posttrain_assets.synthesis.evolution import OUTPUT_SCHEMA, conversation
    from posttrain_assets.synthesis.solutions import SOLUTIONS_SCHEMA

    gsm = [json.loads(x) for x in (REPO / "posttrain_assets/sample_data/gsm8k/train_300.jsonl").read_text().splitlines()[:3]]
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    keys = ("gsm8k", "other")
    for key in keys:
        store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", key))
        store.write(COT_SCHEMA.empty_table(), store.path("cot_records", key))
        store.write(PREFERENCE_SCHEMA.empty_table(), store.path("preference_records", key))
    no_contamination(store, keys)
    evol = [{"id": f"gsm8k:{i}:evol:r{rnd}", "source": "gsm8k", "input": f"{r['question']} (round {rnd})",
             "output": r["answer"], "conversation": conversation("sys", f"{r['question']} (round {rnd})", r["answer"]),
             "parent_id": f"gsm8k:{i}", "seed_prompt": r["question"], "round": rnd, "evolution_path": "width",
             "language": "en", "template_versions": "{}", "generator_model": "embedded:m", "judge_model": "embedded:m",
             "judge_verdict": "{}"} for i, r in enumerate(gsm) for rnd in (1, 2)]
    store.write(pa.Table.from_pylist(evol, schema=OUTPUT_SCHEMA), store.path("evolved_instructions", "gsm8k"))
    sols = [{"all_prompt_id": f"gsm8k:{i}", "source": "gsm8k", "sample": s, "language": "en", "kind": "math",
             "prompt": r["question"], "gold_answer": r["answer"].split("####")[-1].strip(), "solution": r["answer"],
             "final_answer": r["answer"].split("####")[-1].strip(), "correct": True, "verifier": "math_verify",
             "math_verify": True, "pass_rate": 1.0, "generator_model": "embedded:m", "task": "solve_math_problem@1"}
            for i, r in enumerate(gsm) for s in (0, 1)]
    store.write(pa.Table.from_pylist(sols, schema=SOLUTIONS_SCHEMA), store.path("generated_solutions", "gsm8k"))
    reg = tmp_path / "s.yaml"
    reg.write_text(yaml.safe_dump({"sources": [{"key": k, "kind": "sft", "licence": "MIT", "adapter": "helpsteer3",
                                                "loader": {"path": str(HS3)}} for k in keys]}))
    instance.add_dynamic_partitions("source", list(keys))
    upstream = [dg.AssetSpec(k, partitions_def=dg.DynamicPartitionsDefinition(name="source"))
                for k in ("sft_records", "cot_records", "preference_records", "evolved_instructions",
                          "generated_solutions", "contamination")]
    run = dg.materialize(upstream + [hf_parquet], selection=[hf_parquet], instance=instance,
                         resources=resources_for(root, reg),
                         run_config={"ops": {"hf_parquet": {"config": {"test_fraction": 0.5}}}})
    md = mat_metadata(run, "hf_parquet")
    assert (md["rows_evol"], md["rows_generated"], md["rows_sft"]) == (6, 6, 0)
    assert md["synthetic_missing"] == {"evol": ["other"], "generated": ["other"],
                                       "preference_synthetic": ["gsm8k", "other"], "steerlm": ["gsm8k", "other"]}
    out = tmp_path / "storage" / "hf_export"
    def load(config):  # every split the export wrote for `config`
        present = [s for s in ("train", "test") if list((out / "data" / config).glob(f"{s}-*"))]
        return {s: load_export(str(out), config, split=s) for s in present}

    evol_splits = load("evol")
    side = {}
    for split, ds in evol_splits.items():
        for r in ds:
            side.setdefault(r["parent_id"], set()).add(split)
            assert r["conversation"][1] == {"from": "human", "value": r["input"]}
    assert sum(ds.num_rows for ds in evol_splits.values()) == 6
    assert sorted(side) == ["gsm8k:0", "gsm8k:1", "gsm8k:2"] and all(len(s) == 1 for s in side.values())
    gen = datasets.concatenate_datasets(list(load("generated").values()))
    assert gen.num_rows == 6 and {"problem", "solution", "answer", "gold_answer", "pass_rate"} <= set(gen.column_names)
    assert sorted(set(gen["answer"])) == sorted({r["answer"].split("####")[-1].strip() for r in gsm})
    assert sorted(set(gen["problem"])) == sorted(r["question"] for r in gsm)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == ["evol", "generated"]
    assert "| gsm8k | sft | MIT | 0 | 0 | 0 | 6 | 6 |" in card
