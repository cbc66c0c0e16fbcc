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
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    table = {ln.split()[0]: ln.split() for ln in lines if re.match(r"^[a-z0-9_]+\s+(cot|sft|prompt|preference|attributes|synthetic)\s", ln)}
    # raw rows, raw rejected, records in, kept, removed, rejected, reasons, after global dedup
    assert table["gsm8k"][2:10] == ["300", "0", "300", "300", "0", "0", "-", "300"]
    assert table["hh_rlhf_harmless_base"][2:10] == ["300", "0", "300", "299", "0", "1", "empty_response=1", "299"]
    assert table["awesome_chatgpt_prompts"][2:10] == ["211", "1", "210", "210", "0", "0", "csv_extra_columns=1", "207"]
    # 129 after dedup: with the multilingual default embedder the two Russian follow-ups that MiniLM
    # merged (unrelated questions) stay
    assert table["oasst2_labelled"][2:10] == ["60", "0", "130", "129", "1", "0", "exact_duplicate=1", "129"]
    # the Magpie source: 8 instructions written and answered by the embedded model, then ingested like any source
    assert table["magpie_smollm2"][1:6] == ["synthetic", "8", "0", "8", "8"]
    assert len(table) == 10
    assert table["helpsteer"][2:10] == ["500", "0", "500", "468", "32", "0", "exact_duplicate=32", "468"]
    assert table["oasst2_ja_edited"][1:10] == ["attributes", "30", "0", "18", "18", "0", "0", "-", "18"]
    assert "10 sources, 2,044 merged prompts" in out.stdout
    # one more awesome-chatgpt-prompts prompt is also a HelpSteer prompt
    assert "| awesome_chatgpt_prompts | 210 | 207 | 1 | 2 | 0 | 3 |" in out.stdout  # dedup summary
    assert "Hugging Face export: sft 894, cot 300, preference 394, evol " in out.stdout
    # SteerLM: the attribute sources' rows, the CPU model, one source labelled
    assert "  helpsteer attribute_training_data: 468 labelled replies (train 376, val 92)" in out.stdout
    assert re.search(r"  attribute_model [0-9a-f]{16} \(head; 506 train / 139 val rows; [0-9.]+s\): beats the "
                     r"training-mean baseline on .*helpfulness, correctness, coherence", out.stdout)
    assert "  oasst_en attribute_labelled_sft: 97 rows (97 predicted, " in out.stdout
    assert ", steerlm 97 rows" in out.stdout
    # synthesis at demo size: a funnel line per source and asset; 3 problems x 2 solutions where there
    # is a gold answer, 2 seeds evolved
    assert "Synthesis funnels" in out.stdout
    for key in ("gsm8k", "self_instruct", "oasst_en", "magpie_smollm2"):
        assert f"  {key} generated_solutions: problems 3, solutions 6 -> generated 6 -> " in out.stdout
        assert f"  {key} evolved_instructions: width 4->" in out.stdout
    assert "generated_solutions: problems 0" not in out.stdout  # sources without problems print no line
    # Magpie at demo size, then its tags (every tag a value or a counted failure), the filter (the quality
    # rule off: see DEMO_RUN_CONFIG) and one preference-pair pass: 4 prompts x 3 candidates
    assert "  magpie_smollm2 magpie_instructions: requested 8 in 1 calls -> generated 8 -> " in out.stdout
    assert "  magpie_smollm2 quality_tags: rows 8 -> tagged 8; " in out.stdout
    assert "  magpie_smollm2 filtered_instructions: 8 -> kept " in out.stdout
    assert re.search(r"  magpie_smollm2 preference_pairs: prompts 4 -> candidates 12 -> unique \d+ -> scored \d+ "
                     r"\(judge:embedded:[^)]*\)\) -> pairs \d+; no pair: ", out.stdout)
    import duckdb
    import datasets

    con = duckdb.connect(str(tmp_path / "storage" / "catalog.duckdb"), read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"raw_records", "merged_prompts", "prompt_embeddings", "dedup_clusters", "dedup_summary",
            "dedup_cluster_report", "deduplicated_prompts", "sft_records", "cot_records",
            "preference_records", "difficulty_scores", "selected_seeds", "generated_solutions",
            "solution_pass_rates", "hard_problems", "evolved_instructions", "magpie_instructions", "quality_tags",
            "filtered_instructions", "preference_pairs", "attribute_training_data", "attribute_model",
            "attribute_labelled_sft", "steerlm_sft", "hf_parquet", "rejects"} == views
    # scoring and selection at demo size: 12 scored items and 60 length-selected seeds per source
    # with gold answers; none for the prompt-only and preference sources
    scored = dict(con.execute("SELECT source, count(*) FROM difficulty_scores GROUP BY 1").fetchall())
    # the `attributes` sources take only labelling (registry model_stages default): no scoring job for them
    assert scored == {"gsm8k": 12, "self_instruct": 12, "oasst_en": 12, "magpie_smollm2": 8}
    seeds = dict(con.execute("SELECT source, count(*) FROM selected_seeds GROUP BY 1").fetchall())
    assert seeds == {"gsm8k": 60, "self_instruct": 60, "oasst_en": 60, "magpie_smollm2": 8}
    assert table["hh_rlhf_harmless_base"][10:12] == ["0", "0"] and table["gsm8k"][10:12] == ["12", "60"]
    assert con.execute("SELECT after, removed_other_source FROM dedup_summary WHERE source = "
                       "'awesome_chatgpt_prompts'").fetchall() == [(207, 2)]
    # the advertiser prompt of awesome-chatgpt-prompts also opens an OASST conversation
    assert con.execute("SELECT representative_source, match FROM dedup_clusters WHERE all_prompt_id = "
                       "'awesome_chatgpt_prompts:prompts_act_prompt_2025-02-03:12'").fetchall() == [("oasst_en", "semantic")]
    rates = con.execute("SELECT source, count(*), count(*) FILTER (WHERE status = 'ok' OR status = 'no_verdict') "
                        "FROM solution_pass_rates GROUP BY 1").fetchall()
    assert {r[0]: r[2] for r in rates} == {"gsm8k": 3, "self_instruct": 3, "oasst_en": 3, "magpie_smollm2": 3}
    assert {r[0]: r[1] for r in rates} == seeds  # one row per problem loaded (the rest: not_sampled)
    kept = con.execute("SELECT count(*) FROM generated_solutions").fetchone()[0]
    # the Magpie chain in SQL: tags keep the generated uuid, the pairs name rows the filter kept
    assert con.execute("SELECT count(*) FROM quality_tags t JOIN magpie_instructions m ON t.id = m.uuid").fetchone() == (8,)
    assert con.execute("SELECT count(*) FROM preference_pairs p LEFT JOIN filtered_instructions f "
                       "ON p.all_prompt_id = f.id WHERE f.id IS NULL").fetchone() == (0,)
    pairs = con.execute("SELECT count(*) FROM preference_pairs").fetchone()[0]
    evol = con.execute("SELECT count(*) FROM evolved_instructions").fetchone()[0]
    con.close()
    export = tmp_path / "storage" / "hf_export"
    assert f"evol {evol}, generated {kept}, preference_synthetic {pairs}, steerlm 97 rows" in out.stdout
    assert datasets.load_dataset(str(export), "cot", split="train").num_rows == 300
    assert datasets.load_dataset(str(export), "preference", split="train").num_rows == 394
    assert f"DuckDB:    {tmp_path / 'storage' / 'catalog.duckdb'}" in out.stdout
    # the runs and materialisations are in the instance the UI reads
    assert (tmp_path / "home" / "dagster.yaml").read_text().startswith("# Instance config")
    with _instance(tmp_path / "home") as inst:
        for asset in ("raw_records", "merged_prompts"):
            assert inst.get_materialized_partitions(dg.AssetKey(asset)) == set(table)


def _instance(home):
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
