"""Hygiene stage: rule-based filters over every record and synthetic table (no model)."""
