"""Benchmarks runnable by users through ``n2i-stream bench``."""
