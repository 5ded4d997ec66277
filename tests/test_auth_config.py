"""Auth configurations: JWKS (RS256/ES256) with issuer and audience, dev secret, CLI, production."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api.chains import LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.core.errors import Unauthenticated
from app.server import create_app
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.payloads import LEAD

ISSUER = "https://securetoken.example.test/crm-project"
AUDIENCE = "crm-project"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(algorithm: Any, key: Any, kid: str, alg: str) -> dict[str, Any]:
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk(RSAAlgorithm, RSA_KEY, "rsa-1", "RS256"), jwk(ECAlgorithm, EC_KEY, "ec-1", "ES256")]}


def oidc_token(alg: str = "RS256", **overrides: Any) -> str:
    claims = {"sub": "uid-1", "tenant_id": "acme", "roles": ["rep"], "iss": ISSUER, "aud": AUDIENCE,
              "exp": int(time.time()) + 600, "iat": int(time.time())}
    claims.update(overrides)
    key, kid = (RSA_KEY, "rsa-1") if alg == "RS256" else (EC_KEY, "ec-1")
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def oidc_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    jwks_app = Starlette(routes=[Route("/jwks.json", lambda request: JSONResponse(JWKS))])
    with live_server(jwks_app) as jwks_url:
        settings = make_settings(
            tmp_path_factory.mktemp("oidc"),
            auth_jwt_secret=None,
            app_env="production",
            auth_jwks_url=f"{jwks_url}/jwks.json",
            auth_issuer=ISSUER,
            auth_audience=AUDIENCE,
            metrics_token="scrape-secret",
            data_encryption_key="an-oidc-test-master-key-of-enough-length",
        )
        with live_server(create_app(settings)) as url:
            yield url


def score(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}{LEAD_SCORING_PATH}/invoke", json={"input": LEAD},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def test_a_key_the_identity_provider_withdraws_stops_verifying_after_the_key_set_expires(
    tmp_path: Path,
) -> None:
    """Keys were once cached for the life of the process (PyJWT's `cache_keys`): a key the
    provider withdrew, say a leaked one, went on verifying tokens until a restart."""
    served = {"keys": list(JWKS["keys"])}
    jwks_app = Starlette(routes=[Route("/jwks.json", lambda request: JSONResponse(served))])
    with live_server(jwks_app) as jwks_url:
        verifier = TokenVerifier(Settings(
            _env_file=None, app_env="test", data_dir=tmp_path, auth_jwks_url=f"{jwks_url}/jwks.json",
            auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_cache_s=0.5, auth_verified_cache_s=0))
        assert (await verifier.verify(oidc_token("RS256"))).tenant_id == "acme"
        served["keys"] = [key for key in JWKS["keys"] if key["kid"] != "rsa-1"]
        assert (await verifier.verify(oidc_token("RS256", sub="uid-2"))).user_id == "uid-2", "until the set expires"
        await asyncio.sleep(0.6)
        with pytest.raises(Unauthenticated) as refused:
            await verifier.verify(oidc_token("RS256", sub="uid-3"))
        assert refused.value.reason == "unknown_key"
        assert (await verifier.verify(oidc_token("ES256"))).tenant_id == "acme", "the keys still served still verify"


async def test_while_the_identity_provider_is_down_its_last_key_set_stands_in_for_a_bounded_time(
    tmp_path: Path,
) -> None:
    """Without `cache_keys`, a key set that expired during the provider's outage left
    nothing to verify with: every new sign-in was refused, each after a fetch."""
    fetches: list[bool] = []

    def keys(request: Any) -> JSONResponse:
        fetches.append(down)
        return JSONResponse({"error": "unavailable"}, status_code=503) if down else JSONResponse(JWKS)

    down = False
    with live_server(Starlette(routes=[Route("/jwks.json", keys)])) as jwks_url:
        verifier = TokenVerifier(Settings(
            _env_file=None, app_env="test", data_dir=tmp_path, auth_jwks_url=f"{jwks_url}/jwks.json",
            auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_cache_s=0.5, auth_jwks_stale_s=3.0,
            auth_verified_cache_s=0))
        assert (await verifier.verify(oidc_token("RS256"))).user_id == "uid-1"
        down = True
        await asyncio.sleep(0.6)
        assert (await verifier.verify(oidc_token("RS256", sub="uid-2"))).user_id == "uid-2", "the last set stands in"
        assert (await verifier.verify(oidc_token("ES256", sub="uid-3"))).user_id == "uid-3"
        assert fetches == [False, True], "kept for a lifespan again: one failed fetch, not one per token"
        await asyncio.sleep(2.5)
        with pytest.raises(Unauthenticated) as refused:
            await verifier.verify(oidc_token("RS256", sub="uid-4"))
        assert refused.value.reason == "key_set_unavailable", "past the bound, and said as it is"
        down = False
        assert (await verifier.verify(oidc_token("RS256", sub="uid-5"))).user_id == "uid-5", "back when it is"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwks_tokens_are_accepted(oidc_service: str, alg: str) -> None:
    assert score(oidc_service, oidc_token(alg)).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [{"iss": "https://evil.example.test"}, {"aud": "another-project"}, {"exp": int(time.time()) - 600},
     {"tenant_id": None}],
)
def test_jwks_tokens_with_wrong_claims_are_refused(oidc_service: str, overrides: dict[str, Any]) -> None:
    claims = {k: v for k, v in overrides.items() if v is not None}
    token = oidc_token(**claims)
    if "tenant_id" in overrides:
        payload = jwt.decode(token, options={"verify_signature": False})
        payload.pop("tenant_id")
        token = jwt.encode(payload, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert score(oidc_service, token).status_code == 401


def test_production_without_secret_refuses_hs256(oidc_service: str) -> None:
    forged = jwt.encode({"sub": "x", "tenant_id": "acme", "exp": int(time.time()) + 60},
                        "guessable-secret-guessable-secret-00", algorithm="HS256")
    assert score(oidc_service, forged).status_code == 401


def test_key_confusion_with_public_key_as_hmac_secret_is_refused(oidc_service: str) -> None:
    # Built by hand: PyJWT itself refuses to HMAC-sign with a PEM public key.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa-1"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "x", "tenant_id": "acme", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert score(oidc_service, f"{signing_input}.{b64(signature)}").status_code == 401


def test_production_refuses_to_start_without_auth(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="refuses to start"):
        Settings(_env_file=None, app_env="production", data_dir=tmp_path,
                 data_encryption_key="a-production-master-key-kept-in-a-secret-store")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(_env_file=None, app_env="production", auth_jwt_secret="short", data_dir=tmp_path)


@pytest.mark.parametrize("limit", ["0/minute", "many", "120 per fortnight"])
def test_a_rate_limit_that_lets_nothing_through_or_does_not_parse_refuses_to_start(tmp_path: Path, limit: str) -> None:
    with pytest.raises(ValidationError, match="rate_limit_user"):
        Settings(_env_file=None, data_dir=tmp_path, rate_limit_user=limit)


def test_dev_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_jwt_secret=None, app_env="development")
    first = TokenVerifier(settings)
    second = TokenVerifier(settings)
    assert first.secret_is_generated and first.secret == second.secret
    assert stat.S_IMODE(os.stat(settings.auth_secret_file).st_mode) == 0o600


def test_cli_token_is_accepted_by_the_running_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "APP_ENV"))}
    env["DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "app", "token", "--tenant", "acme", "--user", "carol",
         "--roles", "rep,manager", "--ttl", "120"],
        capture_output=True, text=True, env=env, check=True, cwd=Path(__file__).parent.parent,
    )
    token = result.stdout.strip()
    settings = make_settings(tmp_path, auth_jwt_secret=None, app_env="development")
    with live_server(create_app(settings)) as url:
        response = score(url, token)
    assert response.status_code == 200, response.text
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == ["manager", "rep"] and claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"port": 9123}, "http://127.0.0.1:9123/api/v1/ai/realtime/interactions/playground/?token="),
     ({"host": "0.0.0.0", "port": 8080}, "http://127.0.0.1:8080/"),
     ({"port": 9123, "public_url": "https://crm.example.com/"}, "https://crm.example.com/api/v1/")],
)
def test_the_printed_sign_in_link_follows_host_port_and_public_url(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    import logging

    settings = make_settings(tmp_path, auth_jwt_secret=None, app_env="development", **overrides)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("app").addHandler(handler)
    try:
        with live_server(create_app(settings)):
            pass
    finally:
        logging.getLogger("app").removeHandler(handler)
    link = next(line for record in records for line in record.splitlines() if "playground" in line)
    assert expected in link, link
