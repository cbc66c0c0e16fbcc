"""Pure helpers shared by every stage: row accounting, text normalisation, answer extraction, and
the Dagster metadata builders (`metadata`, the one module here that imports dagster)."""
