"""Stage `scoring`: `difficulty_scores` (LLM). Pure modules: difficulty; model tasks: tasks + templates/."""
