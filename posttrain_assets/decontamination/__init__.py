"""Decontamination against evaluation sets: benchmarks as data, n-gram overlap in every language, a report, and the export stop."""
