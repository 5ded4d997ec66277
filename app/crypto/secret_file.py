"""A secret generated once and kept in a file only its owner can read."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def load_or_create_secret(path: Path, *, what: str = "development secret") -> str:
    """Returns the secret in `path`, generating it once with mode 0600.

    Kept on disk so what it protects (tokens minted by `python -m app token`, data
    encrypted under the development master key) keeps working across restarts. The file
    appears whole or not at all (written aside, then linked into place), so two workers
    starting together agree on one secret and neither reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            os.link(draft, path)  # fails if another process got there first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{what} in {path} is too short; delete the file")
    return secret
