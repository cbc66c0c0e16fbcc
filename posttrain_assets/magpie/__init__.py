"""Magpie (Xu et al. 2024): instructions synthesised from an aligned chat model given only its
pre-query template. Pure modules: templates (the per-family pre-query templates of
templates/pre_query_templates.yaml, and the reject rules for generated instructions)."""
