"""Stage `dedup`: `prompt_embeddings` -> global `dedup_clusters` (+ report, summary) -> `deduplicated_prompts`. Pure modules: embedding, clustering, duplicates."""
