"""Durable state: SQLite in DATA_DIR by default, PostgreSQL when DATABASE_URL is set."""
