"""Command line: `python -m app token --tenant T --user U [--roles rep,manager] [--ttl 3600]`."""

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
    args = parser.parse_args(argv)

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
