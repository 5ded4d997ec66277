"""A secret generated once and kept in a file only its owner can read."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_secret(path: Path, *, what: str = "development secret") -> str:
    """Returns the secret in `path`, generating it once with mode 0600.

    Kept on disk so what it protects (tokens minted by `python -m app token`, data
    encrypted under the development master key) keeps working across restarts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise RuntimeError(f"{what} in {path} is too short; delete the file")
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
