"""The SteerLM chain on the bundled real data: attribute_training_data (HelpSteer, HelpSteer2, OASST trees
with labels, Japanese OASST edits), attribute_model (the CPU head; real embedder), attribute_labelled_sft
over OASST SFT records (resumable after a SIGKILL), steerlm_sft (both formats), the LoRA backend for a few
real steps on the embedded SmolLM2, the reward resource's `attributes` backend, and add_label."""

import json
import os
import subprocess
import sys
import textwrap

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from .helpers import SAMPLE, mat_metadata, materialize_source, resources_for, upstream_specs, write_registry
from posttrain_assets.ingest.adapters import helpsteer_turns, oasst_message_trees
from posttrain_assets.ingest.assets import merged_prompts, raw_records
from posttrain_assets.records.unify import sft_from
from posttrain_assets.steerlm import model as am
from posttrain_assets.steerlm.assets import attribute_labelled_sft, attribute_model, attribute_training_data, steerlm_sft
from posttrain_assets.steerlm.attributes import ATTRIBUTES, IGNORE, parse_label_string
from posttrain_assets.steerlm.labelling import Checkpoint, chosen_labels, conversations, inference_inputs, label
from posttrain_assets.steerlm.lora import LoraSettings, lora_files, masked_mse, train_lora
from resources.embeddings import EmbeddingClient
from resources.reward import AttributesReward, RewardResource
from resources.storage import StorageResource

SOURCES = [
    {"key": "helpsteer", "kind": "attributes", "adapter": "helpsteer", "licence": "CC-BY-4.0",
     "loader": {"path": str(SAMPLE / "helpsteer/helpsteer_train_500.jsonl")}},
    {"key": "helpsteer2", "kind": "attributes", "adapter": "helpsteer", "licence": "CC-BY-4.0",
     "loader": {"path": str(SAMPLE / "helpsteer2/helpsteer2_train_head100.jsonl")}},
    {"key": "oasst2_labelled", "kind": "attributes", "adapter": "oasst_tree", "licence": "Apache-2.0",
     "loader": {"path": str(SAMPLE / "oasst2_labelled/oasst2_filtered_60.jsonl")}},
    {"key": "oasst2_ja_edited", "kind": "attributes", "adapter": "oasst_messages", "licence": "Apache-2.0",
     "fields": {"text": "text_ja_audited", "quality": "quality"},
     "loader": {"path": str(SAMPLE / "oasst2_ja_edited/edited_data_flat.json")}},
    {"key": "oasst_en", "kind": "sft", "adapter": "oasst_tree", "licence": "Apache-2.0",
     "loader": {"path": str(SAMPLE / "oasst_en/en_100_tree_40.jsonl")}},
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every source ingested and turned into attribute_training_data, the CPU model trained, the OASST
    SFT records labelled and rendered. One instance and storage for the module's tests."""
    tmp = tmp_path_factory.mktemp("steerlm")
    root = str(tmp / "storage")
    reg = write_registry(tmp / "sources.yaml", SOURCES)
    out = {"root": root, "reg": reg, "data": {}}
    with dg.DagsterInstance.ephemeral() as inst:
        for s in SOURCES:
            res = materialize_source(s["key"], inst, root, reg, assets=(raw_records, merged_prompts, attribute_training_data))
            out["data"][s["key"]] = mat_metadata(res, "attribute_training_data")
        res = dg.materialize([attribute_model, *upstream_specs("attribute_training_data")], instance=inst,
                             resources=resources_for(root, reg))
        out["model_md"] = mat_metadata(res, "attribute_model")
        store = StorageResource(root=root).store()
        out["model"] = store.read(store.path("attribute_model", None))
        sft, _ = sft_from(store.read(store.path("merged_prompts", "oasst_en")), True)
        store.write(sft, store.path("sft_records", "oasst_en"))
        res = dg.materialize([attribute_labelled_sft, steerlm_sft, dg.AssetSpec("attribute_model"),
                              *upstream_specs("sft_records")], partition_key="oasst_en", instance=inst,
                             resources=resources_for(root, reg), selection=["attribute_labelled_sft", "steerlm_sft"])
        out["label_md"] = mat_metadata(res, "attribute_labelled_sft")
        out["labelled"] = store.read(store.path("attribute_labelled_sft", "oasst_en"))
        out["steerlm"] = store.read(store.path("steerlm_sft", "oasst_en"))
        out["store"] = store
        yield out


def test_training_rows_per_source_are_accounted(chain):
    got = {k: (m["rows_in"], m["rows_out"], dict(m["removed_by_reason"]), dict(m["rejected_by_reason"]),
               m["train_rows"], m["val_rows"]) for k, m in chain["data"].items()}
    assert got == {
        # 500 rows, 32 exact repeats (same prompt and response) removed by merged_prompts before this step
        "helpsteer": (468, 468, {}, {}, 376, 92),
        "helpsteer2": (100, 100, {}, {}, 76, 24),
        # 65 prompter messages without a reply; 64 replies, each with OASST labels
        "oasst2_labelled": (129, 64, {"no_response": 65}, {}, 41, 23),
        # 30 messages, 9 trees: 13 replies rated by the editor; 5 unanswered prompter messages
        "oasst2_ja_edited": (18, 13, {"no_response": 5}, {}, 13, 0),
        "oasst_en": (0, 0, {}, {}, 0, 0),  # kind sft: not an attribute source
    }


def test_no_group_on_both_sides_and_missing_labels_stay_null(chain):
    store = chain["store"]
    for key in ("helpsteer", "helpsteer2", "oasst2_labelled", "oasst2_ja_edited"):
        t = store.read(store.path("attribute_training_data", key)).to_pylist()
        sides = {}
        for r in t:
            sides.setdefault(r["group"], set()).add(r["split"])
        assert all(len(s) == 1 for s in sides.values()), key
    hs = store.read(store.path("attribute_training_data", "helpsteer")).to_pylist()[0]
    assert hs["labels"] == [None, None, None, None, 3, 4, 4, 2, 2]
    assert hs["label_string"] == "helpfulness:3,correctness:4,coherence:4,complexity:2,verbosity:2"
    oa = store.read(store.path("attribute_training_data", "oasst2_labelled")).to_pylist()
    assert all(r["labels"][4:] == [None] * 5 and r["n_labels"] == 4 for r in oa)  # OASST's own helpfulness ignored
    ja = store.read(store.path("attribute_training_data", "oasst2_ja_edited")).to_pylist()
    assert {r["label_string"] for r in ja} <= {f"quality:{q}" for q in range(5)}
    assert all(r["language"] == "ja" for r in ja)
    assert ja[0]["text"].startswith("User: ") and "\n\nAssistant: " in ja[0]["text"]


def test_cpu_model_beats_the_mean_on_helpsteer_and_is_saved(chain):
    m = {r["attribute"]: r for r in chain["model"].to_pylist()}
    for a in ("helpfulness", "correctness", "coherence"):
        assert m[a]["val_rows"] == 116
        assert m[a]["mae"] < m[a]["baseline_mae"] and m[a]["mae"] < 1.0, m[a]
    assert m["quality"]["train_rows"] == 41 + 13 and m["toxicity"]["train_rows"] == 41
    md = chain["model_md"]
    assert md["rows_train"] == 376 + 76 + 41 + 13 and md["rows_val"] == 92 + 24 + 23
    assert md["rows_per_source_and_attribute"]["oasst2_ja_edited"]["quality"] == 13
    store, version = chain["store"], md["version"]
    manifest = am.read_manifest(store, am.artifact_dir(store.base, version))
    assert manifest["backend"] == "head" and manifest["embedder"] == EmbeddingClient().model_name
    # users find the artifact by the materialization's `version`, not by a pointer file in the storage
    assert not store.exists(f"{store.base}/{am.MODEL_DIR}/LATEST")


def test_a_source_without_the_steerlm_stage_is_not_labelled(chain, tmp_path):
    """Registry `model_stages` without steerlm: no row predicted, all 97 counted not_in_model_stages."""
    entry = {**next(s for s in SOURCES if s["key"] == "oasst_en"), "key": "oasst_en_off", "model_stages": ["scoring"]}
    reg = write_registry(tmp_path / "sources.yaml", [entry])
    store = chain["store"]
    store.write(store.read(store.path("sft_records", "oasst_en")), store.path("sft_records", "oasst_en_off"))
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions("source", ["oasst_en_off"])
        res = dg.materialize([attribute_labelled_sft, dg.AssetSpec("attribute_model"), *upstream_specs("sft_records")],
                             partition_key="oasst_en_off", instance=inst, resources=resources_for(chain["root"], reg),
                             selection=["attribute_labelled_sft"])
    md = mat_metadata(res, "attribute_labelled_sft")
    assert (md["rows_in"], md["rows_out"], md["predicted"], dict(md["removed_by_reason"])) == (
        97, 0, 0, {"not_in_model_stages": 97})
    assert all(c.passed for c in res.get_asset_check_evaluations())


def test_labelled_sft_and_both_formats(chain):
    lab, st = chain["labelled"], chain["steerlm"]
    assert chain["label_md"]["rows_in"] == lab.num_rows == st.num_rows == 97
    assert chain["label_md"]["predicted"] == 97 and chain["label_md"]["from_checkpoint"] == 0
    version = chain["model_md"]["version"]
    for r in lab.to_pylist():
        assert r["model_version"] == version
        assert all(v in range(5) for v in r["attributes"])  # every head trained: 9 values, clamped, rounded
        assert r["attributes"] == [min(max(round(x), 0), 4) for x in r["raw_attributes"]]
        assert parse_label_string(r["label_string"]) == dict(zip(ATTRIBUTES, r["attributes"]))
    hist = chain["label_md"]["histograms"]
    assert sum(hist["helpfulness"].values()) == 97
    s = st.to_pylist()[0]
    conv = s["messages"]
    assert s["steerlm_text"] == (
        "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.\n"
        f"<extra_id_1>User\n{conv[0]['content']}\n<extra_id_1>Assistant\n<extra_id_2>{s['label_string']}\n"
        f"{conv[1]['content']}")
    assert s["llmjp_text"] == ("以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n"
                               f"{conv[0]['content']}\n{s['label_string']}\n\n### 応答:\n{conv[1]['content']}")


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from posttrain_assets.steerlm import model as am
    from posttrain_assets.steerlm.labelling import Checkpoint, conversations, label
    from resources.embeddings import EmbeddingClient
    from resources.storage import StorageResource
    store = StorageResource(root={root!r}).store()
    emb = EmbeddingClient()
    p = am.load(store, am.artifact_dir(store.base, {version!r}), embed=emb.encode, embedder_name=emb.model_name)

    class DiesOnSecondChunk:
        version = p.version
        calls = 0
        def predict(self, texts, responses):
            self.calls += 1
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return p.predict(texts, responses)

    rows, _ = conversations(store.read(store.path("sft_records", "oasst_en")), "oasst_en", "sft_records")
    label(rows, "oasst_en", "sft_records", DiesOnSecondChunk(), Checkpoint(store, {ckpt!r}), chunk_rows=30)
""")


def test_labelling_resumes_after_a_kill_without_repredicting(chain, tmp_path):
    store, version = chain["store"], chain["model_md"]["version"]
    ckpt = f"{tmp_path}/ckpt"
    script = KILL_SCRIPT.format(root=chain["root"], version=version, ckpt=ckpt)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    emb = EmbeddingClient()
    real = am.load(store, am.artifact_dir(store.base, version), embed=emb.encode, embedder_name=emb.model_name)

    class Counting:
        def __init__(self):
            self.version, self.rows = real.version, 0

        def predict(self, texts, responses):
            self.rows += len(texts)
            return real.predict(texts, responses)

    counting = Counting()
    rows, _ = conversations(store.read(store.path("sft_records", "oasst_en")), "oasst_en", "sft_records")
    table, stats = label(rows, "oasst_en", "sft_records", counting, Checkpoint(store, ckpt), chunk_rows=30)
    assert (stats["from_checkpoint"], stats["predicted"], counting.rows) == (30, 67, 67)
    assert table.num_rows == 97 and table["id"].to_pylist() == chain["labelled"]["id"].to_pylist()
    assert table["attributes"].to_pylist() == chain["labelled"]["attributes"].to_pylist()
    np.testing.assert_allclose(np.array(table["raw_attributes"].to_pylist(), float),
                               np.array(chain["labelled"]["raw_attributes"].to_pylist(), float), rtol=1e-5, atol=1e-5)
    again, stats = label(rows, "oasst_en", "sft_records", counting, Checkpoint(store, ckpt), chunk_rows=30)
    assert stats["predicted"] == 0 and counting.rows == 67


def test_reward_attributes_backend_scores_with_the_trained_model(chain):
    reward = RewardResource(backend=AttributesReward(attribute_weights={"helpfulness": 1.0, "verbosity": -0.5}))
    pairs = [("What is the capital of France?", "Paris."),
             ([{"role": "user", "content": "日本の首都は？"}], "東京です。")]
    res = reward.score(None, pairs, storage=StorageResource(root=chain["root"]),
                       attribute_version=chain["model_md"]["version"])  # what the scoring asset passes
    assert [r.ok for r in res] == [True, True]
    for r in res:
        assert set(r.aspects) == set(ATTRIBUTES)
        assert r.overall == pytest.approx(r.aspects["helpfulness"] - 0.5 * r.aspects["verbosity"])
        assert r.model == f"attributes:{chain['model_md']['version']}"
    reward.close()


def test_masked_loss_ignores_missing_attributes():
    import torch

    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[2.0, IGNORE], [IGNORE, IGNORE]])
    assert float(masked_mse(pred, target)) == 1.0  # one cell counts: (1 - 2)^2
    assert float(masked_mse(pred, torch.full((2, 2), float(IGNORE)))) == 0.0


def test_lora_backend_trains_real_steps_and_loads_back(tmp_path):
    rows = [json.loads(x) for x in (SAMPLE / "helpsteer2/helpsteer2_train_head100.jsonl").read_text().splitlines()[:6]]
    texts = [f"User: {r['prompt']}\n\nAssistant: {r['response']}" for r in rows]
    labels = [[None] * 4 + [r[a] for a in ATTRIBUTES[4:]] for r in rows]
    labels[0] = [3, 0, 1, 2] + [None] * 5  # a row with only the OASST attributes
    s = LoraSettings(base_model="embedded", max_steps=3, batch_size=2, max_length=64, learning_rate=1e-3)
    local = tmp_path / "adapter"
    stats, before = train_lora(texts, labels, str(local), s, predict_texts=texts[:3])
    assert stats["steps"] == 3 and stats["device"] == "cpu" and np.isfinite(stats["last_loss"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(lora_files(str(local)))
    store = StorageResource(root=str(tmp_path / "storage")).store()
    folder = am.artifact_dir(store.base, "v-test")
    am.save_folder(store, folder, str(local), {"version": "v-test", "backend": "lora", "files": lora_files(str(local)),
                                               "settings": {"base_model": "embedded", "max_length": 64}})
    predictor = am.load(store, folder)
    after = predictor.predict(texts[:3])
    assert after.shape == (3, 9)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_helpsteer2_multi_turn_prompts_and_flat_oasst_messages():
    assert helpsteer_turns("Hi\n<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nTell me a joke") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"}]
    from partitions.registry import _parse_source

    spec = _parse_source({"key": "m", "kind": "attributes", "adapter": "oasst_messages", "licence": "Apache-2.0",
                          "loader": {"path": "x.json"}}, 0, "test", ".")
    rows = [("f", 0, {"message_id": "a", "parent_id": None, "role": "prompter", "text": "q"}),
            ("f", 1, {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "r"}),
            ("f", 2, {"message_id": "c", "parent_id": "zz", "role": "assistant", "text": "lost"})]
    out = list(oasst_message_trees(rows, spec))
    assert [(r, type(x).__name__) for _, r, x in out] == [(2, "RowReject"), (0, "dict")]
    assert out[0][2].reason == "orphan_message" and out[0][2].field == "parent_id"
    assert out[1][2]["replies"][0]["text"] == "r"


def test_attribute_kind_needs_a_labelled_adapter():
    from partitions.registry import RegistryError, _parse_source

    with pytest.raises(RegistryError, match="source 'x': field 'adapter': kind 'attributes' needs an adapter whose rows carry human labels: one of oasst_tree, helpsteer, oasst_messages, got 'generic'"):
        _parse_source({"key": "x", "kind": "attributes", "adapter": "generic", "fields": {"prompt": "p"},
                       "licence": "MIT", "loader": {"path": "x.jsonl"}}, 0, "test", ".")


def test_add_label_writes_inference_inputs(tmp_path):
    labels = chosen_labels("toxicity=0,humor=0", default=4)
    assert labels == {"quality": 4, "toxicity": 0, "humor": 0, "creativity": 4, "helpfulness": 4,
                      "correctness": 4, "coherence": 4, "complexity": 4, "verbosity": 4}
    assert inference_inputs([[{"role": "user", "content": "こんにちは"}]], labels, "llmjp") == [
        "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\nこんにちは\n"
        "quality:4,toxicity:0,humor:0,creativity:4,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4"
        "\n\n### 応答:\n"]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Write a haiku"}) + "\n")
    from posttrain_assets.steerlm.add_label import main

    assert main(["--input", str(src), "--output", str(tmp_path / "out.jsonl"), "--labels", "humor=4"]) == 0
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["label_string"] == "humor:4"
    assert row["text"].endswith("<extra_id_1>User\nWrite a haiku\n<extra_id_1>Assistant\n<extra_id_2>humor:4\n")
    with pytest.raises(ValueError, match="label 'kindness=1': expected <attribute>=<0-4>"):
        chosen_labels("kindness=1")
