"""Every asset's name, once: what configs (`input_asset` defaults), jobs, automation and the demo's run
config say when they name an asset. A stage's `@asset` function is named after its asset; the
constant says the same name so the other modules never spell it (tests/test_asset_names.py keeps
each constant equal to an asset of `defs`, and these modules free of asset names as strings)."""

# ingest
RAW_RECORDS = "raw_records"
MERGED_PROMPTS = "merged_prompts"
# magpie
MAGPIE_INSTRUCTIONS = "magpie_instructions"
# dedup
PROMPT_EMBEDDINGS = "prompt_embeddings"
DEDUP_CLUSTERS = "dedup_clusters"
DEDUP_CLUSTER_REPORT = "dedup_cluster_report"
DEDUP_SUMMARY = "dedup_summary"
DEDUPLICATED_PROMPTS = "deduplicated_prompts"
# records
SFT_RECORDS = "sft_records"
COT_RECORDS = "cot_records"
PREFERENCE_RECORDS = "preference_records"
# scoring
DIFFICULTY_SCORES = "difficulty_scores"
# selection
SELECTED_SEEDS = "selected_seeds"
FILTERED_INSTRUCTIONS = "filtered_instructions"
HARD_PROBLEMS = "hard_problems"
# synthesis
GENERATED_SOLUTIONS = "generated_solutions"
SOLUTION_PASS_RATES = "solution_pass_rates"
EVOLVED_INSTRUCTIONS = "evolved_instructions"
PREFERENCE_PAIRS = "preference_pairs"
# tagging
QUALITY_TAGS = "quality_tags"
# steerlm
ATTRIBUTE_TRAINING_DATA = "attribute_training_data"
ATTRIBUTE_MODEL = "attribute_model"
ATTRIBUTE_LABELLED_SFT = "attribute_labelled_sft"
STEERLM_SFT = "steerlm_sft"
# decontamination
BENCHMARK_INDEX = "benchmark_index"
CONTAMINATION = "contamination"
CONTAMINATION_REPORT = "contamination_report"
# export
HF_PARQUET = "hf_parquet"
# hygiene: the rule-based filters, one clean table per record / synthetic table
CLEAN_SFT_RECORDS = "clean_sft_records"
CLEAN_COT_RECORDS = "clean_cot_records"
CLEAN_PREFERENCE_RECORDS = "clean_preference_records"
CLEAN_EVOLVED_INSTRUCTIONS = "clean_evolved_instructions"
CLEAN_GENERATED_SOLUTIONS = "clean_generated_solutions"
CLEAN_PREFERENCE_PAIRS = "clean_preference_pairs"
