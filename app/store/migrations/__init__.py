"""Schema migrations (Alembic), applied at start-up by `app.store.database.migrate`."""
