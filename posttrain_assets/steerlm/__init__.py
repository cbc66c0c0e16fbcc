"""SteerLM (issue 11, in progress): attribute mappings, label strings and training formats (attributes.py)."""
