"""Benchmark suite of vectorstore: ``python -m benchmarks --quick`` (see __main__)."""
