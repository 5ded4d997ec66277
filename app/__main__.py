"""Command line.

- `python -m app token --tenant T --user U [--roles rep,manager] [--ttl 3600]`
- `python -m app audit verify`: checks the tamper-evident audit chain (`app.audit_cli`).
"""

from __future__ import annotations

import argparse
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
    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chain of the configured database; print tenant heads")
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
