"""Magpie (Xu et al. 2024): instructions synthesised from an aligned chat model given only its
pre-query template. `assets.py`: `magpie_instructions` (per source; only `kind: synthetic` sources
with `generator: magpie` generate). Pure modules: templates (the per-family pre-query templates of
templates/pre_query_templates.yaml, and the reject rules for generated instructions), generation
(instructions -> rejects / duplicates -> answers, the settings hash and the overwrite guard)."""
