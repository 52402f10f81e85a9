"""Benchmarks: ``python -m fair_calib_hf.bench <name>`` (see BENCHMARKS.md)."""
