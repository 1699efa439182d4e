"""Benchmarks (not tests): speed and memory targets, measured side by side in one run.

Run one with ``python -m vitprune_lite.benchmarks.<name>``; each prints a table and writes
``data/benchmarks/<name>.json`` with the environment it ran in.
"""
