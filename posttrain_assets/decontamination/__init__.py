"""Decontamination: training rows checked against evaluation sets (the benchmarks registry)."""
