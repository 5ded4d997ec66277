"""Command line.

- `python -m app token --tenant T --user U [--roles rep,manager] [--ttl 3600]`
- `python -m app keys rotate [--data-keys]`: re-wraps every tenant's data keys under the
  current DATA_ENCRYPTION_KEY (the old one in DATA_ENCRYPTION_OLD_KEYS meanwhile); with
  `--data-keys`, also gives every tenant a new data key for its new records.
- `python -m app audit verify`: checks the tamper-evident audit chain (`app.audit_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.core.auth import TokenVerifier
from app.core.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a token the running configuration accepts")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--roles", default="rep", help="comma-separated, e.g. rep,manager")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    keys = commands.add_parser("keys", help="encryption keys at rest")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = key_commands.add_parser("rotate", help="re-wrap data keys under the current master key")
    rotate.add_argument("--data-keys", action="store_true", help="also start a new data key per tenant")
    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chain of the configured database; print tenant heads")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return asyncio.run(rotate_keys(new_data_keys=args.data_keys))

    if args.command == "audit":
        from app.audit_cli import verify_command  # imports the stores: only this command needs them

        return verify_command(get_settings())

    verifier = TokenVerifier(get_settings())
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    try:
        print(verifier.mint(tenant_id=args.tenant, user_id=args.user, roles=roles, ttl_s=args.ttl))
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


async def rotate_keys(*, new_data_keys: bool) -> int:
    """Safe while the service runs: a replica unwraps with the old or the new master key,
    and reads a tenant's keys again within DATA_KEY_CACHE_S."""
    from app.core.encryption_keys import key_rotation

    for store, (rewrapped, versions) in (await key_rotation(get_settings(), new_data_keys=new_data_keys)).items():
        print(f"{store}: {rewrapped} data keys re-wrapped, {versions} new data keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
