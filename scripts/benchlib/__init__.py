"""Benchmark harness behind scripts/bench (run it as `scripts/bench`; see docs/BENCHMARKS.md)."""
