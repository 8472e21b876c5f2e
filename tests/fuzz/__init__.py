"""Fuzz tests: every decoder of untrusted bytes returns a value or raises its typed error.

Bounded in CI (`CI_EXAMPLES` cases per decoder); `R3MES_FUZZ_LONG=1` runs each decoder for
its share of `R3MES_FUZZ_SECONDS` (default 900) and prints the cases and slowest case.
"""
