"""The identity provider's signing keys, kept through its outages, never past a bound.

PyJWT's `PyJWKClient` keeps the key set for its lifespan, then fetches it again; a fetch
that fails leaves it nothing, so every token not yet verified is refused. Its other
cache (`cache_keys`) avoids that by keeping every key it ever saw for the life of the
process, so a key the provider withdraws (a leaked one) never stops verifying. Here the
last set the provider served stands in while it cannot be reached, for a bounded time
after it was fetched (`AUTH_JWKS_STALE_S`), and a set served in its place is kept for a
lifespan again: during an outage one request in a lifespan waits for the fetch's
timeout, not every request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError

log = logging.getLogger(__name__)


class KeySetClient(PyJWKClient):
    def __init__(self, uri: str, *, lifespan_s: float, stale_s: float, timeout_s: float) -> None:
        super().__init__(uri, cache_keys=False, lifespan=lifespan_s, timeout=timeout_s)
        self._stale_s = stale_s
        self._last_good: tuple[float, Any] | None = None  # (fetched at, monotonic; the set)

    def fetch_data(self) -> Any:
        try:
            key_set = super().fetch_data()
        except PyJWKClientConnectionError as error:
            if self._last_good is None:
                raise
            fetched_at, key_set = self._last_good
            age_s = time.monotonic() - fetched_at
            if age_s > self._stale_s:
                raise
            log.warning("the identity provider's key set cannot be fetched (%s): using the one fetched %.0f s ago",
                        error, age_s)
            return key_set
        self._last_good = (time.monotonic(), key_set)
        return key_set
