"""Benchmarks that print goals and measured ratios, and the mixture testbed they share."""
