"""Deterministic simulator driving the sans-I/O core."""
