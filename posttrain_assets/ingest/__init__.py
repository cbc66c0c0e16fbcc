"""Stage `ingest`: registry sources -> `raw_records` (rows as loaded) -> `merged_prompts` (the unified prompt schema). Pure modules: loaders, adapters, merging."""
