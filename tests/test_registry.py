"""The sources registry: the bundled file loads; every kind of mistake names file, source, field."""

import pytest
import yaml

from partitions.registry import RegistryError, load_registry, parse_registry

GOOD = {"key": "g", "kind": "cot", "adapter": "gsm8k", "loader": {"path": "x.jsonl"}, "licence": "MIT"}


def test_bundled_registry_loads(bundled):
    assert bundled.keys == ["gsm8k", "hh_rlhf_harmless_base", "awesome_chatgpt_prompts",
                            "self_instruct", "oasst_en", "oasst2_labelled"]
    kinds = {s.key: s.kind for s in bundled.sources}
    assert kinds["hh_rlhf_harmless_base"] == "preference" and kinds["gsm8k"] == "cot"
    for s in bundled.sources:
        (path,) = s.resolved_paths()
        assert path.is_file() and (path.parent / "LICENSE").is_file() and (path.parent / "SOURCE.md").is_file()
    gsm = bundled.get("gsm8k")
    assert gsm.column("prompt") == "question" and gsm.column("response") == "answer"


@pytest.mark.parametrize("patch, source, field, words", [
    ({"kind": "cots"}, "g", "kind", "must be one of prompt, sft, cot, preference, attributes"),
    ({"adapter": "nope"}, "g", "adapter", "must be one of generic"),
    ({"licence": ""}, "g", "licence", "required"),
    ({"loader": None}, "g", "loader", "required"),
    ({"loader": {"path": "a", "hub": "b"}}, "g", "loader", "exactly one of"),
    ({"loader": {"path": "a", "format": "xml"}}, "g", "loader.format", "must be one of jsonl"),
    ({"loader": {"path": "a", "limit": 0}}, "g", "loader.limit", "positive integer"),
    ({"loader": {"path": "a", "glob": "b"}}, "g", "loader.glob", "unknown field"),
    ({"fields": {"question": "q"}}, "g", "fields.question", "adapter 'gsm8k' has no field 'question'"),
    ({"fields": {"prompt": 3}}, "g", "fields.prompt", "must be a column name"),
    ({"key": "Bad Key"}, "#0", "key", "must match"),
    ({"colour": "red"}, "g", "colour", "unknown field"),
    ({"priority": "high"}, "g", "priority", "must be an integer"),
    ({"dedup_key": "hash"}, "g", "dedup_key", "must be one of record, prompt"),
    ({"kind": "preference", "adapter": "generic", "fields": {"prompt": "p"}}, "g", "fields",
     "needs 'chosen' and 'rejected'"),
    ({"adapter": "generic", "fields": {}}, "g", "fields", "needs prompt mapped"),
])
def test_invalid_entries_name_source_and_field(patch, source, field, words):
    entry = {**GOOD, **patch}
    with pytest.raises(RegistryError) as err:
        parse_registry({"sources": [entry]}, where="reg.yaml")
    msg = str(err.value)
    assert msg.startswith(f"reg.yaml: source '{source}': field '{field}': "), msg
    assert words in msg, msg


def test_duplicate_keys_and_shape_errors():
    with pytest.raises(RegistryError, match="source 'g': field 'key': duplicate source key"):
        parse_registry({"sources": [GOOD, GOOD]}, where="reg.yaml")
    with pytest.raises(RegistryError, match="field 'sources': must be a non-empty list"):
        parse_registry({"sources": []}, where="reg.yaml")
    with pytest.raises(RegistryError, match="source '#1': each source must be a mapping"):
        parse_registry({"sources": [GOOD, "oops"]}, where="reg.yaml")


def test_file_errors(tmp_path):
    with pytest.raises(RegistryError, match="sources registry not found"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n  - key: x\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(bad)


def test_unknown_key_lists_known(bundled):
    with pytest.raises(RegistryError, match="unknown source key 'gsm9k'; the registry has: gsm8k, "):
        bundled.get("gsm9k")


def test_relative_paths_resolve_against_registry_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n')
    reg_file = tmp_path / "sources.yaml"
    reg_file.write_text(yaml.safe_dump({"sources": [{**GOOD, "loader": {"path": "d/*.jsonl"}}]}))
    (path,) = load_registry(reg_file).get("g").resolved_paths()
    assert path == tmp_path / "d" / "a.jsonl"
