"""Encryption at rest: master keys, per-tenant data keys, sealed records (see README, Security)."""
