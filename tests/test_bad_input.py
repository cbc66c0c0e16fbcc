"""Every kind of bad input ends as a counted reject row or one clear error naming source/row/field.

The files are real bundled rows with one defect planted each.
"""

import csv
import gzip
import io
import json

import dagster as dg
import duckdb
import pytest

from posttrain_assets.ingest.assets import raw_records

from .helpers import SAMPLE, mat_metadata, materialize_source, step_error, write_registry

GSM = (SAMPLE / "gsm8k" / "train_300.jsonl").read_text(encoding="utf-8").splitlines()
AWESOME = SAMPLE / "awesome_chatgpt_prompts" / "prompts_act_prompt_2025-02-03.csv"


def gsm_source(path, **kw):
    return {"key": "bad", "kind": "cot", "adapter": "gsm8k", "loader": {"path": str(path)},
            "licence": "MIT", **kw}


def run(tmp_path, instance, storage_root, source, **kw):
    reg = write_registry(tmp_path / "sources.yaml", [source])
    return materialize_source("bad", instance, storage_root, reg, **kw)


def rejects(storage_root, asset):
    path = f"{storage_root}/_rejects/{asset}/source=bad/data.parquet"
    return duckdb.sql(f"SELECT source_row, reason, field, detail, outcome FROM '{path}' ORDER BY source_row").fetchall()


def test_malformed_json_line(tmp_path, instance, storage_root):
    lines = GSM[:10]
    lines[3] = lines[3][:-5]  # truncated object
    (tmp_path / "g.jsonl").write_text("\n".join(lines) + "\n")
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "g.jsonl"))
    md = mat_metadata(res, "raw_records")
    assert (md["rows_in"], md["rows_out"], md["rejected"]) == (10, 9, 1)
    assert md["rejected_by_reason"] == {"malformed_json": 1}
    ((row, reason, field, detail, outcome),) = rejects(storage_root, "raw_records")
    assert (row, reason, outcome) == (3, "malformed_json", "rejected")
    assert detail.startswith("line 4: ")
    assert mat_metadata(res, "merged_prompts")["rows_out"] == 9


def test_csv_row_with_missing_column(tmp_path, instance, storage_root):
    rows = list(csv.reader(AWESOME.open(encoding="utf-8")))[:6]
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL)
    for i, r in enumerate(rows):
        w.writerow(r[:1] if i == 3 else r)  # data row 2 loses its `prompt`
    (tmp_path / "p.csv").write_text(buf.getvalue())
    src = {"key": "bad", "kind": "prompt", "adapter": "generic", "fields": {"prompt": "prompt"},
           "loader": {"path": str(tmp_path / "p.csv")}, "licence": "CC0-1.0"}
    res = run(tmp_path, instance, storage_root, src)
    md = mat_metadata(res, "raw_records")
    assert (md["rows_in"], md["rows_out"], md["rejected_by_reason"]) == (5, 4, {"csv_missing_column": 1})
    ((row, reason, field, detail, _),) = rejects(storage_root, "raw_records")
    assert (row, reason, field) == (2, "csv_missing_column", "prompt")
    assert "1 of 2 columns; missing prompt" in detail


def test_mapped_field_absent_from_file_is_one_clear_error(tmp_path, instance, storage_root):
    (tmp_path / "g.jsonl").write_text("\n".join(GSM[:5]) + "\n")
    src = gsm_source(tmp_path / "g.jsonl", fields={"prompt": "questoin"})
    res = run(tmp_path, instance, storage_root, src, raise_on_error=False)
    assert not res.success
    assert step_error(res) == (
        "source 'bad': field mapping prompt -> 'questoin': no column 'questoin' in the source's rows "
        "(columns: question, answer); fix 'fields.prompt' in the registry")
    assert mat_metadata(res, "raw_records")["rows_out"] == 5  # the raw rows are still materialised


@pytest.mark.parametrize("blank", ["", "   ", "\n\t \u3000"])
def test_empty_or_whitespace_prompt(tmp_path, instance, storage_root, blank):
    rows = [json.loads(x) for x in GSM[:4]]
    rows[1]["question"] = blank
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "g.jsonl"))
    md = mat_metadata(res, "merged_prompts")
    assert (md["rows_in"], md["rows_out"], md["rejected_by_reason"]) == (4, 3, {"empty_prompt": 1})
    ((row, reason, field, _, _),) = rejects(storage_root, "merged_prompts")
    assert (row, reason, field) == (1, "empty_prompt", "question")


def test_bytes_that_are_not_utf8(tmp_path, instance, storage_root):
    lines = [x.encode("utf-8") for x in GSM[:6]]
    lines[2] = lines[2].replace(b" ", b" \xff", 1)  # a byte that is not UTF-8 inside a JSONL line
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "g.jsonl.gz"))
    md = mat_metadata(res, "raw_records")
    assert (md["rows_out"], md["rejected_by_reason"]) == (5, {"invalid_utf8": 1})
    ((row, reason, _, detail, _),) = rejects(storage_root, "raw_records")
    assert (row, reason) == (2, "invalid_utf8") and "byte 0xff" in detail

    # the same in a CSV field: the reject names the field
    data = AWESOME.read_bytes().split(b"\n")
    data[2] = data[2].replace(b"SEO Prompt", b"SEO \xe9Prompt", 1)
    (tmp_path / "p.csv").write_bytes(b"\n".join(data[:6]) + b"\n")
    src = {"key": "bad", "kind": "prompt", "adapter": "generic", "fields": {"prompt": "prompt"},
           "loader": {"path": str(tmp_path / "p.csv")}, "licence": "CC0-1.0"}
    res = run(tmp_path, instance, storage_root, src)
    md = mat_metadata(res, "raw_records")
    assert md["rejected_by_reason"] == {"invalid_utf8": 1}
    ((row, reason, field, _, _),) = rejects(storage_root, "raw_records")
    assert (row, reason, field) == (1, "invalid_utf8", "act")


def test_five_megabyte_row(tmp_path, instance, storage_root):
    rows = [json.loads(x) for x in GSM[:3]]
    big = (rows[1]["question"] + " ") * (5_000_000 // (len(rows[1]["question"]) + 1) + 1)
    rows[1]["question"] = big
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (tmp_path / "g.jsonl").stat().st_size > 5_000_000
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "g.jsonl"))
    md_raw, md = mat_metadata(res, "raw_records"), mat_metadata(res, "merged_prompts")
    assert md_raw["rows_out"] == 3  # loaded intact
    assert (md["rows_out"], md["rejected_by_reason"]) == (2, {"prompt_too_long": 1})
    ((row, reason, _, detail, _),) = rejects(storage_root, "merged_prompts")
    assert row == 1 and f"{len(big):,} chars > max_prompt_chars=200,000" in detail
    # raising the limit keeps it, byte for byte
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "g.jsonl"),
              run_config={"ops": {"merged_prompts": {"config": {"max_prompt_chars": 10_000_000}}}})
    assert mat_metadata(res, "merged_prompts")["rows_out"] == 3
    ((n,),) = duckdb.sql(f"SELECT length(prompt) FROM '{storage_root}/merged_prompts/source=bad/data.parquet' "
                         "WHERE source_row = 1").fetchall()
    assert n == len(big)


def test_unknown_source_key(tmp_path, instance, storage_root, bundled):
    reg = tmp_path / "sources.yaml"
    reg.write_text((SAMPLE.parent.parent / "partitions" / "sources.yaml").read_text()
                   .replace("../posttrain_assets", str(SAMPLE.parent.parent / "posttrain_assets")))
    # not a partition at all: Dagster refuses
    with pytest.raises(dg.DagsterUnknownPartitionError):
        dg.materialize([raw_records], partition_key="nope", instance=instance,
                       resources=__import__("tests.helpers", fromlist=["x"]).resources_for(storage_root, reg))
    # a partition whose key is not (or no longer) in the registry: one clear failure
    res = materialize_source("gsm9k", instance, storage_root, reg, assets=[raw_records],
                             raise_on_error=False)
    assert not res.success
    assert "unknown source key 'gsm9k'; the registry has: gsm8k, hh_rlhf_harmless_base" in step_error(res)


def test_invalid_registry_entry_fails_the_step_clearly(tmp_path, instance, storage_root):
    (tmp_path / "g.jsonl").write_text(GSM[0] + "\n")
    reg = write_registry(tmp_path / "sources.yaml", [gsm_source(tmp_path / "g.jsonl", kind="cots")])
    res = materialize_source("bad", instance, storage_root, reg, assets=[raw_records], raise_on_error=False)
    assert not res.success
    err = step_error(res)
    assert err.startswith(f"{reg}: source 'bad': field 'kind': must be one of"), err
    assert "Traceback" not in err


def test_missing_file_is_one_clear_error(tmp_path, instance, storage_root):
    res = run(tmp_path, instance, storage_root, gsm_source(tmp_path / "nowhere" / "*.jsonl"),
              raise_on_error=False)
    assert not res.success
    assert "source 'bad': field 'loader.path': no file matches" in step_error(res)


def test_hub_loader_offline_is_one_clear_error(tmp_path, instance, storage_root):
    src = {"key": "bad", "kind": "cot", "adapter": "gsm8k", "licence": "MIT",
           "loader": {"hub": "openai/gsm8k", "config": "main", "split": "train"}}
    res = run(tmp_path, instance, storage_root, src, raise_on_error=False)
    assert not res.success
    assert "source 'bad': cannot load hub dataset 'openai/gsm8k' (config='main', split='train')" in step_error(res)
