"""Benchmarks: they measure and print; tests assert behaviour."""
