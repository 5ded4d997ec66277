"""`python -m app audit verify`: checks the tamper-evident audit chain of the configured database.

Prints one line per tenant with its head (sequence and hash) so an operator can keep
the heads elsewhere and later prove that nobody rewrote a whole tail; then one line per
problem found. Exit code 0: every chain verifies; 1: tampering found; 2: the database
could not be read.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings
from app.store.audit import CHAINED_TABLES
from app.store.audit_verify import Problem, TenantChain, verify_chain
from app.store.database import create_engine, database_url


async def _verify(settings: Settings) -> tuple[list[TenantChain], list[Problem]]:
    engine = create_engine(database_url(settings.database_url, settings.sqlite_path))
    try:
        async with engine.begin() as connection:  # a transaction: SET LOCAL pins text forms
            return await connection.run_sync(verify_chain, CHAINED_TABLES)
    finally:
        await engine.dispose()


def verify_command(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        chains, unchained = asyncio.run(_verify(settings))
    except SQLAlchemyError as error:
        print(f"error: cannot read the audit chain: {error.__class__.__name__}: {error}", file=err)
        return 2
    problems = [problem for chain in chains for problem in chain.problems] + unchained
    for chain in chains:
        state = "ok" if not chain.problems else f"FAILED ({len(chain.problems)} problems)"
        print(f"tenant {chain.tenant_id}: {chain.links} links, head seq {chain.head_seq} "
              f"hash {chain.head_hash}: {state}", file=out)
    for problem in problems:
        print(f"TAMPERED {problem}", file=out)
    print(f"audit chain: {len(chains)} tenants, {'FAILED' if problems else 'verified'}", file=out)
    return 1 if problems else 0
