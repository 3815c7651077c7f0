"""Reproducible benchmarks of huiyun; results go to docs/benchmarks.md."""
