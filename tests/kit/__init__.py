"""Shared test kit: builders and helpers every test file uses instead of writing its own."""
