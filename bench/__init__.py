"""Benchmark harness (`make bench`): the platform measured side by side with references."""
