"""Benchmarks: one script per published figure; each prints JSON lines."""
