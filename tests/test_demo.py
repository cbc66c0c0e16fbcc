"""The README's main job end to end, run once per session (`demo_run` in conftest.py): every asset for
every source of tests/data/demo_registry.yaml (the bundled registry, one source per conversation format,
a source whose rows are all rejected, and the public datasets users bring: tests/data/brought), then the
summary. Many small tests over its tables, so one
failure does not hide the rest.

What the embedded 135M model writes depends on the CPU's kernels (docs/tests.md "Tests on any CPU"): counts
that follow from model text (how many Magpie instructions are distinct, which evolutions survive, how
many answers are correct) are read from the run's own funnels and checked for their arithmetic; the
counts that do not (ingest, dedup of the real sources, scoring and selection sizes, SteerLM data) are
exact."""

import re

import dagster as dg
import pyarrow.parquet as pq
import pytest

from partitions.registry import load_registry

from .conftest import BUNDLED_REGISTRY, DEMO_REGISTRY
from .helpers import load_export


BUNDLED = ("gsm8k", "hh_rlhf_harmless_base", "awesome_chatgpt_prompts", "self_instruct", "oasst_en",
           "oasst2_labelled", "magpie_smollm2", "helpsteer", "helpsteer2", "oasst2_ja_edited")
FORMATS = ("alpaca_seed_tasks", "sharegpt_glaive_toolcall", "messages_kto_mix", "turns_realpersonachat",
           "turns_realpersonachat_first", "sharegpt_as_generic")
#: tests/data/brought/registry.yaml's entries (no model stage): what each becomes is its adapter's rule
BROUGHT = ("arena_battles", "webdev_battles", "openr1_math", "openmathreasoning_hard", "numina_cot", "limo",
           "helpsteer3_ties")
ALL = BUNDLED + FORMATS + BROUGHT
#: the sources whose model stages the demo runs (registry model_stages): scoring, synthesis, tagging
MODEL_SOURCES = ("gsm8k", "self_instruct", "oasst_en", "magpie_smollm2")
PER_SOURCE = ("merged_prompts", "prompt_embeddings", "deduplicated_prompts", "sft_records",
              "cot_records", "preference_records", "difficulty_scores", "selected_seeds", "generated_solutions",
              "solution_pass_rates", "hard_problems", "evolved_instructions", "magpie_instructions",
              "quality_tags", "filtered_instructions", "preference_pairs")


def _count(run, sql: str) -> dict:
    return dict(run.sql(sql))


def _magpie_rows(run) -> int:
    return run.sql("SELECT count(*) FROM magpie_instructions WHERE source = 'magpie_smollm2'")[0][0]


# --------------------------------------------------------------------------- the registry it runs

def test_the_demo_registry_holds_the_bundled_sources_unchanged():
    """No demo run needed: the session's graph is the README's `make demo` plus the format sources."""
    bundled, demo = load_registry(BUNDLED_REGISTRY), load_registry(DEMO_REGISTRY)
    assert tuple(bundled.keys) == BUNDLED and tuple(demo.keys) == ALL
    for key in BUNDLED:
        a, b = bundled.get(key), demo.get(key)
        assert (a.kind, a.adapter, a.fields, a.priority, a.model_stages, a.generator_config, a.licence) == \
               (b.kind, b.adapter, b.fields, b.priority, b.model_stages, b.generator_config, b.licence), key
        if a.loader.path:
            assert a.resolved_paths() == b.resolved_paths(), key


# --------------------------------------------------------------------------- the run and its summary

def test_every_job_ran_and_the_summary_lists_every_source(demo_run):
    assert "FAILED" not in demo_run.stdout
    assert set(demo_run.table) == set(ALL)
    total = sum(int(demo_run.table[k][5]) for k in demo_run.table)  # kept after merging
    assert f"{len(ALL)} sources, {total:,} merged prompts in " in demo_run.stdout
    assert f"DuckDB:    {demo_run.storage / 'catalog.duckdb'}" in demo_run.stdout


@pytest.mark.parametrize("key, columns", [
    # raw rows, raw rejected, records in, kept, removed, rejected, reasons, after global dedup
    ("gsm8k", ["300", "0", "300", "300", "0", "0", "-", "300"]),
    ("hh_rlhf_harmless_base", ["300", "0", "300", "299", "0", "1", "empty_response=1", "299"]),
    ("awesome_chatgpt_prompts", ["211", "1", "210", "210", "0", "0", "csv_extra_columns=1", "207"]),
    ("self_instruct", ["175", "0", "175", "175", "0", "0", "-", "175"]),
    ("oasst_en", ["40", "0", "337", "337", "0", "0", "-", "337"]),
    # 129 after dedup: with the multilingual default embedder the two Russian follow-ups that MiniLM
    # merged (unrelated questions) stay
    ("oasst2_labelled", ["60", "0", "130", "129", "1", "0", "exact_duplicate=1", "129"]),
    ("helpsteer", ["500", "0", "500", "468", "32", "0", "exact_duplicate=32", "468"]),
    ("helpsteer2", ["100", "0", "100", "100", "0", "0", "-", "100"]),
    ("oasst2_ja_edited", ["30", "0", "18", "18", "0", "0", "-", "18"]),
    # the formats: every row loads and merges; the Alpaca slice is Self-Instruct's seed tasks reshaped
    ("alpaca_seed_tasks", ["40", "0", "40", "40", "0", "0", "-", "0"]),
    ("messages_kto_mix", ["40", "0", "40", "40", "0", "0", "-", "40"]),
    ("sharegpt_glaive_toolcall", ["40", "0", "40", "39", "1", "0", "exact_duplicate=1", "38"]),
    ("turns_realpersonachat", ["30", "0", "30", "30", "0", "0", "-", "30"]),
    # the first user turns only: 9 repeat another dialogue's opening, 6 more are near-duplicates
    ("turns_realpersonachat_first", ["30", "0", "30", "21", "9", "0", "exact_duplicate=9", "15"]),
    # a wrong field mapping: every row loads, none merges
    ("sharegpt_as_generic", ["40", "0", "40", "0", "0", "40", "not_text=40", "0"]),
])
def test_ingest_and_dedup_counts_of_the_real_sources(demo_run, key, columns):
    assert demo_run.table[key][2:2 + len(columns)] == columns


@pytest.mark.parametrize("key, columns, reasons, became", [
    # raw rows, raw rejected, records in, kept, removed, rejected | reasons | sft/cot/pref/ties
    ("arena_battles", ["10", "0", "10", "8", "0", "2"], "conversations_diverge=1, unknown_verdict=1", "0/0/8/3"),
    ("webdev_battles", ["5", "0", "5", "5", "0", "0"], "-", "0/0/5/2"),
    # 12 problems: 11 CoT rows (`messages`) + 6 best-vs-worst pairs; e6's verdict list is short
    ("openr1_math", ["12", "0", "23", "17", "5", "1"], "incomplete=1, no_correct_trace=2, no_incorrect_trace=2, "
                                                       "verdicts_length_mismatch=1", "0/11/6/0"),
    ("openmathreasoning_hard", ["12", "0", "12", "5", "7", "0"], "label_missing=1, label_not_available=2, "
                                                                 "label_rule_failed=3, label_unparsable=1", "0/5/0/0"),
    ("numina_cot", ["4", "0", "4", "4", "0", "0"], "-", "0/4/0/0"),
    ("limo", ["3", "0", "3", "3", "0", "0"], "-", "0/3/0/0"),
    ("helpsteer3_ties", ["5", "0", "5", "5", "0", "0"], "-", "0/0/5/3"),
])
def test_what_each_brought_dataset_became(demo_run, key, columns, reasons, became):
    """The summary's line per dataset: ingest counts, every reason, and the records it became (no model ran)."""
    row = demo_run.table[key]
    assert row[2:8] == columns and " ".join(row[8:-8]) == reasons and row[-2] == became
    assert row[-8] == columns[3]  # nothing of theirs is a duplicate of another source's prompt
    assert row[-7:-3] == ["-"] * 4  # no scoring, seeds, evolution or solutions: model_stages []


def test_the_exported_preference_config_holds_each_sides_turns(demo_run):
    """TRL's conversational format with an implicit prompt: chosen_messages / rejected_messages, every
    turn of each side; the ties stay out of the export (counted)."""
    ds = load_export(str(demo_run.storage / "hf_export"), "preference", split="train")
    rows = demo_run.sql("SELECT all_prompt_id, len(chosen_messages), len(rejected_messages) FROM "
                        "clean_preference_records WHERE NOT tie")
    assert sorted(zip(ds["all_prompt_id"], map(len, ds["chosen_messages"]), map(len, ds["rejected_messages"]))) == \
        sorted(rows)
    assert "tie" not in ds.column_names and "tie_kind" not in ds.column_names
    ties = demo_run.sql("SELECT count(*) FROM preference_records WHERE tie")[0][0]
    assert ties == 3 + 2 + 3 and f"(ties excluded: {ties}; contaminated left out: 1)" in demo_run.stdout
    arena = [m for i, m in zip(ds["all_prompt_id"], ds["chosen_messages"]) if i.startswith("arena_battles:")]
    assert sorted(len(m) for m in arena) == [2, 2, 4, 4, 6]


def test_the_synthetic_source_holds_what_its_generator_wrote(demo_run):
    """magpie_smollm2's rows are the embedded model's: how many are distinct depends on the CPU."""
    row = demo_run.table["magpie_smollm2"]
    generated = _magpie_rows(demo_run)
    assert row[1] == "synthetic" and int(row[2]) == generated and row[3] == "0" and int(row[4]) == generated
    assert int(row[4]) == int(row[5]) + int(row[6]) + int(row[7])  # records in = kept + removed + rejected
    line = re.search(r"  magpie_smollm2 magpie_instructions: requested 8 in 1 calls -> generated (\d+) "
                     r"(?:\(out: [^)]*\) )?-> unique (\d+) -> answered (\d+)", demo_run.stdout)
    assert line and int(line[1]) <= 8 and int(line[3]) <= int(line[2]) <= int(line[1])
    assert int(line[3]) == generated


# --------------------------------------------------------------------------- the catalogue

def test_every_asset_is_a_view_in_the_catalogue(demo_run):
    views = {r[0] for r in demo_run.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert {"raw_records", "merged_prompts", "prompt_embeddings", "dedup_clusters", "dedup_summary",
            "dedup_cluster_report", "deduplicated_prompts", "sft_records", "cot_records",
            "preference_records", "difficulty_scores", "selected_seeds", "generated_solutions",
            "solution_pass_rates", "hard_problems", "evolved_instructions", "magpie_instructions", "quality_tags",
            "filtered_instructions", "preference_pairs", "attribute_training_data", "attribute_model",
            "attribute_labelled_sft", "steerlm_sft", "hf_parquet", "rejects", "benchmark_index", "contamination",
            "contamination_report", "clean_sft_records", "clean_cot_records", "clean_preference_records",
            "clean_evolved_instructions", "clean_generated_solutions", "clean_preference_pairs"} == views


def test_the_instance_the_ui_reads_holds_every_partition(demo_run):
    from dagster._core.instance.ref import InstanceRef

    assert (demo_run.home / "dagster.yaml").read_text().startswith("# Instance config")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(demo_run.home))) as inst:
        for asset in ("raw_records", "merged_prompts", "deduplicated_prompts", "sft_records"):
            assert inst.get_materialized_partitions(dg.AssetKey(asset)) == set(ALL), asset


# --------------------------------------------------------------------------- global dedup

def test_global_dedup_summary_and_a_cross_source_cluster(demo_run):
    # one more awesome-chatgpt-prompts prompt is also a HelpSteer prompt
    assert "| awesome_chatgpt_prompts | 210 | 207 | 1 | 2 | 0 | 3 |" in demo_run.stdout
    assert demo_run.sql("SELECT after, removed_other_source FROM dedup_summary WHERE source = "
                        "'awesome_chatgpt_prompts'") == [(207, 2)]
    # the advertiser prompt of awesome-chatgpt-prompts also opens an OASST conversation
    assert demo_run.sql("SELECT representative_source, match FROM dedup_clusters WHERE all_prompt_id = "
                        "'awesome_chatgpt_prompts:prompts_act_prompt_2025-02-03:12'") == [("oasst_en", "semantic")]


def test_the_alpaca_slice_is_all_duplicates_of_self_instruct(demo_run):
    assert demo_run.sql("SELECT count(*), count(*) FILTER (WHERE NOT keep AND representative_source = "
                        "'self_instruct') FROM dedup_clusters WHERE source = 'alpaca_seed_tasks'") == [(40, 40)]


# --------------------------------------------------------------------------- scoring, selection, synthesis

def test_scoring_and_selection_sizes(demo_run):
    """12 scored items and 60 length-selected seeds per source with model stages (all of a smaller one);
    none for the sources whose registry model_stages leave them out."""
    after = {k: int(demo_run.table[k][9]) for k in MODEL_SOURCES}
    scored = _count(demo_run, "SELECT source, count(*) FROM difficulty_scores GROUP BY 1")
    seeds = _count(demo_run, "SELECT source, count(*) FROM selected_seeds GROUP BY 1")
    assert scored == {k: min(12, after[k]) for k in MODEL_SOURCES}
    assert seeds == {k: min(60, after[k]) for k in MODEL_SOURCES}
    assert demo_run.table["gsm8k"][10:12] == ["12", "60"] and demo_run.table["hh_rlhf_harmless_base"][10:12] == ["0", "0"]


def test_solutions_one_pass_rate_row_per_seed_and_three_problems(demo_run):
    seeds = _count(demo_run, "SELECT source, count(*) FROM selected_seeds GROUP BY 1")
    rates = demo_run.sql("SELECT source, count(*), count(*) FILTER (WHERE status = 'ok' OR status = 'no_verdict') "
                         "FROM solution_pass_rates GROUP BY 1")
    assert {r[0]: r[1] for r in rates} == seeds  # one row per problem loaded (the rest: not_sampled)
    assert {r[0]: r[2] for r in rates} == {k: min(3, n) for k, n in seeds.items()}
    for key, n in seeds.items():
        p = min(3, n)
        assert f"  {key} generated_solutions: problems {p}, solutions {2 * p} -> generated {2 * p} -> " in demo_run.stdout
        assert f"  {key} evolved_instructions: width " in demo_run.stdout
    assert "generated_solutions: problems 0" not in demo_run.stdout  # sources without problems print no line


def test_the_magpie_chain_in_sql(demo_run):
    """Tags keep the generated uuid; the filter and the pairs name rows that came before them."""
    generated = _magpie_rows(demo_run)
    assert f"  magpie_smollm2 quality_tags: rows {generated} -> tagged {generated}; " in demo_run.stdout
    assert f"  magpie_smollm2 filtered_instructions: {generated} -> kept " in demo_run.stdout
    assert demo_run.sql("SELECT count(*) FROM quality_tags t JOIN magpie_instructions m ON t.id = m.uuid") == [(generated,)]
    assert demo_run.sql("SELECT count(*) FROM preference_pairs p LEFT JOIN filtered_instructions f "
                        "ON p.all_prompt_id = f.id WHERE f.id IS NULL") == [(0,)]
    prompts = min(4, demo_run.sql("SELECT count(*) FROM filtered_instructions WHERE source = 'magpie_smollm2'")[0][0])
    line = re.search(rf"  magpie_smollm2 preference_pairs: prompts {prompts} -> candidates {3 * prompts} -> unique (\d+) "
                     r"-> scored (\d+) \(judge:embedded:[^)]*\)\) -> pairs (\d+)", demo_run.stdout)
    assert line and int(line[2]) <= int(line[1]) <= 3 * prompts and int(line[3]) <= prompts
    assert int(line[3]) == demo_run.sql("SELECT count(*) FROM preference_pairs")[0][0]


# --------------------------------------------------------------------------- SteerLM

def test_steerlm_training_data_model_and_labels(demo_run):
    out = demo_run.stdout
    assert "  helpsteer attribute_training_data: 468 labelled replies (train 376, val 92)" in out
    assert re.search(r"  attribute_model [0-9a-f]{16} \(head; 506 train / 139 val rows; [0-9.]+s\): ", out)
    assert "  oasst_en attribute_labelled_sft: 97 rows (97 predicted, " in out
    assert demo_run.sql("SELECT count(*) FROM steerlm_sft") == [(97,)]


# --------------------------------------------------------------------------- the export

def test_the_export_counts_what_the_tables_hold(demo_run):
    export = demo_run.storage / "hf_export"
    line = re.search(r"Hugging Face export: sft (\d+), cot (\d+), preference (\d+), evol (\d+), generated (\d+), "
                     r"preference_synthetic (\d+), steerlm (\d+) rows", demo_run.stdout)
    assert line
    sft, cot, pref, evol, generated, synthetic, steerlm = map(int, line.groups())
    # + the brought datasets: 23 CoT rows, 16 pairs (8 ties out); - the GSM8K train row that is a test item;
    # the hygiene rules drop no CoT or preference record of these sources (HH-RLHF's refusals are flagged)
    assert (cot, pref, steerlm) == (300 + 23 - 1, 394 + 16, 97)
    count = lambda table, where="": demo_run.sql(f"SELECT count(*) FROM {table} {where}")[0][0]  # noqa: E731
    assert (cot + 1, pref) == (count("clean_cot_records"), count("clean_preference_records", "WHERE NOT tie"))
    # the export reads the clean tables: what the hygiene rules left
    assert sft == count("clean_sft_records") < count("sft_records")
    assert evol == count("clean_evolved_instructions")
    assert generated == count("clean_generated_solutions")
    assert synthetic == count("clean_preference_pairs")
    for config, n in (("sft", sft), ("cot", cot), ("preference", pref), ("steerlm", steerlm)):
        assert load_export(str(export), config, split="train").num_rows == n, config


# --------------------------------------------------------------------------- the all-rejected source

def test_an_all_rejected_source_says_why_and_the_graph_carries_on(demo_run):
    assert ("sharegpt_as_generic: all 40 rows of 'sharegpt_as_generic' rejected: not_text on field "
            "'conversations[0]' (turn 0: expected a string, got dict)") in demo_run.stdout
    # the only source whose rows all fail at ingest; model stages may lose all of a source's few demo-sized
    # items to the 135M model (those lines say "rejected or removed"), and rows removed by policy are no failure
    assert re.findall(r"^(\w+): all \d+ rows of '\w+' rejected: ", demo_run.stdout, re.M) == ["sharegpt_as_generic"]
    storage = demo_run.storage
    assert pq.read_table(storage / "raw_records" / "source=sharegpt_as_generic" / "data.parquet").num_rows == 40
    for asset in PER_SOURCE:  # an empty table, with its schema, in every later asset
        t = pq.read_table(storage / asset / "source=sharegpt_as_generic" / "data.parquet")
        assert t.num_rows == 0 and t.schema.names == pq.read_schema(
            storage / asset / "source=gsm8k" / "data.parquet").names, asset


def test_every_record_is_checked_against_the_benchmarks_and_the_report_says_what_it_found(demo_run):
    """The bundled benchmarks against every source's records: one GSM8K train problem is GSM8K test
    item 632 with other names and numbers (the near-duplicate family); the export leaves it out."""
    records = sum(demo_run.sql(f"SELECT count(*) FROM {t}")[0][0] for t in ("sft_records", "cot_records",
                                                                             "preference_records"))
    assert demo_run.sql("SELECT count(*) FROM contamination")[0][0] == records
    assert demo_run.sql("SELECT source, record_asset, item_id FROM contamination WHERE contaminated") == [
        ("gsm8k", "cot_records", "632")]
    assert demo_run.sql("SELECT benchmark, count(*) FROM benchmark_index WHERE part = 'question' GROUP BY 1 "
                        "ORDER BY 1") == [("gsm8k_test", 1319), ("humaneval", 164), ("ifeval", 541),
                                          ("math500", 487), ("mt_bench_en", 80)]
    # 13 MATH-500 problems are shorter than one 8-gram ("Compute $\\dbinom{31}{28}$."): they cannot be matched,
    # and the index's metadata counts them (and 16 HumanEval solutions, matched against responses)
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(demo_run.home))) as inst:
        md = inst.get_latest_materialization_event(dg.AssetKey("benchmark_index")).asset_materialization.metadata
    assert md["too_short_for_one_ngram"].value == {"math500": {"question": 13}, "humaneval": {"answer": 16}}
    assert demo_run.sql("SELECT source, benchmark, items_matched, over_threshold FROM contamination_report "
                        "WHERE items_matched > 0") == [("gsm8k", "gsm8k_test", 1, False)]
    assert f"Decontamination ({records} records checked, 1 contaminated):" in demo_run.stdout
    assert "| gsm8k | gsm8k_test | 1/1319 | 0.08% | 1 | no |" in demo_run.stdout
    rejects = demo_run.sql("SELECT reason, duplicate_of FROM rejects WHERE asset = 'hf_parquet'")
    assert rejects == [("contaminated", "gsm8k_test:632")]
    card = (demo_run.storage / "hf_export" / "README.md").read_text()
    assert "## Decontamination" in card and "| cot | gsm8k_test | 1 |" in card


# --------------------------------------------------------------------------- hygiene

def test_every_record_goes_through_the_hygiene_rules(demo_run):
    """Each source's clean tables account for every record (kept + dropped with a hygiene reason); every
    Magpie row the embedded model cut at its token limit is dropped; HH-RLHF's refusals are flagged and
    kept (its registry entry); the summary and the card say what each rule did."""
    for table in ("sft_records", "cot_records", "preference_records"):
        kept = dict(demo_run.sql(f"SELECT source, count(*) FROM clean_{table} GROUP BY 1"))
        dropped = dict(demo_run.sql(f"SELECT source, count(*) FROM rejects WHERE asset = 'clean_{table}' GROUP BY 1"))
        total = dict(demo_run.sql(f"SELECT source, count(*) FROM {table} GROUP BY 1"))
        assert {k: kept.get(k, 0) + dropped.get(k, 0) for k in total} == total, table
    cut = demo_run.sql("SELECT all_prompt_id FROM sft_records WHERE source = 'magpie_smollm2' AND "
                       "metadata LIKE '%\"finish_reason\": \"length\"%'")
    assert cut and not demo_run.sql("SELECT all_prompt_id FROM clean_sft_records WHERE all_prompt_id IN "
                                    f"({', '.join(repr(r[0]) for r in cut)})")
    flagged = demo_run.sql("SELECT all_prompt_id FROM clean_preference_records WHERE source = 'hh_rlhf_harmless_base' "
                           "AND list_contains(hygiene_flags, 'refusal')")
    assert len(flagged) >= 1 and not demo_run.sql("SELECT * FROM rejects WHERE asset = 'clean_preference_records' "
                                                  "AND source = 'hh_rlhf_harmless_base' AND reason = 'refusal'")
    assert "Hygiene (rows each rule dropped / flagged, per clean table" in demo_run.stdout
    assert "  hh_rlhf_harmless_base clean_preference_records: 299 -> 299; dropped none; flagged " in demo_run.stdout
    card = (demo_run.storage / "hf_export" / "README.md").read_text()
    assert "## Hygiene" in card and "`refusal` (drop)" in card
    assert "- `hh_rlhf_harmless_base` was filtered with `refusal` (flag)" in card

