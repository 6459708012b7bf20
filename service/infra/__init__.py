"""Process-level plumbing: settings, database engines and sessions, migrations, worker processes,
the SQLModel tables and the clock. It owns no use case; it may import only `service.errors` and
third-party libraries, and everything else in `service` may import it.
"""
