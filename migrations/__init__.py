"""Alembic migrations for the trialbridge schema (run with `trialbridge migrate`)."""
