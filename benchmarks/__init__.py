"""Benchmarks (run as ``python -m benchmarks.<name>``); reports, not tests."""
