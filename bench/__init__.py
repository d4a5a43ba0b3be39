"""Benchmarks and study runners (they print tables; none of them is a test)."""
