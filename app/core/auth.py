"""Who is calling: verifies JWTs and turns them into a typed `Principal`.

One verifier serves HTTP routes, LangServe's endpoints (through a dependency), the
playground's cookie and WebSocket connections, so every door checks the same way.
HS256 tokens are checked against AUTH_JWT_SECRET (or the generated development
secret); RS256/ES256 tokens against the keys of AUTH_JWKS_URL. The algorithm list is
fixed per key type, so `alg: none` and algorithm-confusion tokens never verify.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import TTLCache
from jwt.exceptions import PyJWKClientConnectionError
from starlette.requests import HTTPConnection

from app.core.config import Settings
from app.core.errors import Unauthenticated
from app.core.jwks import KeySetClient
from app.crypto.secret_file import load_or_create_secret

SYMMETRIC_ALGORITHMS = ("HS256",)
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
# Tenant ids end up inside cache keys, Redis stream names and SQL rows: keep them plain.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # use fullmatch: `$` matches before "\n"
# A JWT with our claims is well under 2 KB; a bigger header is refused before parsing.
MAX_TOKEN_BYTES = 8 * 1024
VERIFIED_CACHE_SIZE = 10_000  # tokens, kept by their SHA-256 (the token itself is a credential)


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller. Tenant and user of every run come from here alone."""

    user_id: str
    tenant_id: str
    roles: frozenset[str]
    expires_at: float

    def has_any_role(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    tenant_id = claims.get("tenant_id")
    if not isinstance(tenant_id, str) or not TENANT_ID_PATTERN.fullmatch(tenant_id):
        raise Unauthenticated("token has no valid tenant_id claim", reason="claims")
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 256:
        raise Unauthenticated("token has no valid sub claim", reason="claims")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise Unauthenticated("roles claim must be a list of strings", reason="claims")
    # PyJWT checked that int(exp) is in the future, which a digit string passes too; a
    # NumericDate is a JSON number, and one no float holds is no time at all.
    exp = claims.get("exp")
    try:
        expires_at = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else math.nan
    except OverflowError:
        expires_at = math.nan
    if not math.isfinite(expires_at):
        raise Unauthenticated("token has no valid exp claim", reason="claims")
    return Principal(user_id=user_id, tenant_id=tenant_id, roles=frozenset(roles), expires_at=expires_at)


class TokenVerifier:
    """Verifies tokens for the running configuration and mints development ones.

    Without AUTH_JWT_SECRET (and outside production) the development secret is read or
    generated on first use, not when the verifier is built: importing or building the
    app writes nothing to disk.
    """

    def __init__(self, settings: Settings) -> None:
        configured = settings.auth_jwt_secret
        self._secret: str | None = configured.get_secret_value() if configured else None
        self._dev_secret_path = (
            settings.auth_secret_file if configured is None and settings.app_env != "production" else None
        )
        self.issuer = settings.auth_issuer
        self.audience = settings.auth_audience
        self.leeway_s = settings.auth_leeway_s
        self._jwks = (
            KeySetClient(settings.auth_jwks_url, lifespan_s=settings.auth_jwks_cache_s,
                         stale_s=settings.auth_jwks_stale_s, timeout_s=5)
            if settings.auth_jwks_url
            else None
        )
        # A screen opens its streams with one token: verifying its signature each time cost
        # 35-100 us of every request's path to its first event, more than the rest of
        # authentication together. Only verified tokens are kept (a forged one costs a
        # signature check every time, as before), and expiry is checked on every use.
        self._verified: TTLCache[bytes, Principal] | None = (
            TTLCache(VERIFIED_CACHE_SIZE, ttl=settings.auth_verified_cache_s)
            if settings.auth_verified_cache_s > 0 else None
        )

    @property
    def secret_is_generated(self) -> bool:
        return self._dev_secret_path is not None

    @property
    def secret(self) -> str | None:
        if self._secret is None and self._dev_secret_path is not None:
            self._secret = load_or_create_secret(self._dev_secret_path)
        return self._secret

    async def verify(self, token: str) -> Principal:
        """Checks signature, expiry, issuer, audience and the claims we rely on.

        Refusals say what kind of problem it was, never the library's own message (it
        can echo attacker-chosen content); the detail goes to the security log."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large", reason="too_large")
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        verified = self._verified.get(key) if self._verified is not None else None
        if verified is None:
            verified = await self._verify_signed(token)
            if self._verified is not None:
                self._verified[key] = verified
        # PyJWT's own test, for a token verified a while ago: its `exp`, as an integer,
        # must be after now less the leeway. (It leaves the cache at its time-to-live.)
        elif int(verified.expires_at) <= time.time() - self.leeway_s:
            raise Unauthenticated("token expired", reason="expired")
        return verified

    async def _verify_signed(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token", reason="malformed") from exc
        algorithm = header.get("alg")
        key: Any
        secret = self.secret if algorithm in SYMMETRIC_ALGORITHMS else None
        if secret is not None:
            key, allowed = secret, list(SYMMETRIC_ALGORITHMS)
        elif algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            try:
                # PyJWKClient fetches with blocking urllib; the set is kept (`app.core.jwks`).
                signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except PyJWKClientConnectionError as exc:
                raise Unauthenticated("the identity provider's keys cannot be read",
                                      reason="key_set_unavailable") from exc
            except jwt.PyJWTError as exc:
                raise Unauthenticated("no signing key for this token", reason="unknown_key") from exc
            key, allowed = signing_key.key, list(ASYMMETRIC_ALGORITHMS)
        else:
            raise Unauthenticated("token algorithm is not accepted", reason="algorithm")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=allowed,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("invalid token", reason="wrong_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("invalid token", reason="wrong_issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            reason = {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(exc.claim, "missing_claim")
            raise Unauthenticated("invalid token", reason=reason) from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token", reason="invalid") from exc
        return _principal_from_claims(claims)

    def mint(
        self, *, tenant_id: str, user_id: str, roles: Iterable[str] = ("rep",), ttl_s: int = 3600
    ) -> str:
        """Signs an HS256 token the running configuration accepts (development and tests)."""
        secret = self.secret
        if secret is None:
            raise RuntimeError("no HS256 secret configured: tokens come from the identity provider")
        if not TENANT_ID_PATTERN.fullmatch(tenant_id):
            raise ValueError(f"invalid tenant id {tenant_id!r}")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id,
            "tenant_id": tenant_id,
            "roles": sorted(set(roles)),
            "iat": now,
            "exp": now + ttl_s,
        }
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, secret, algorithm="HS256")


def token_from_connection(conn: HTTPConnection, cookie_name: str) -> str | None:
    """The bearer header wins; the session cookie serves browsers (playground, pages)."""
    authorization = conn.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <token>'", reason="malformed_header")
        return credentials.strip()
    return conn.cookies.get(cookie_name) or None


async def authenticate(conn: HTTPConnection) -> Principal:
    """FastAPI dependency for HTTP and WebSocket routes alike.

    Takes HTTPConnection, not Request, so WebSocket routes reuse it. The principal is
    also left on `conn.state` for LangServe's per-request config modifier, which cannot
    see what a dependency returned (langserve#354).
    """
    cached = getattr(conn.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    services = conn.app.state.services  # app.core.services.Services (imports this module)
    verifier: TokenVerifier = services.verifier
    token = token_from_connection(conn, services.settings.auth_cookie_name)
    if token is None:
        raise Unauthenticated("missing bearer token", reason="missing")
    principal = await verifier.verify(token)
    conn.state.principal = principal
    return principal
