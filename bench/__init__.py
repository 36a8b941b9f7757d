"""Tally's benchmarks: ``python -m bench [--quick] [--only NAME] [--runs N]``.

Each benchmark measures a figure and, in the same run, the baseline it is judged
against, so that the ratio survives a noisy machine. Nothing here is a test: the
test suite only checks, in tests/test_bench_smoke.py, that each one still works.
"""
