"""Every chain endpoint and the playground refuse bad tokens; good ones work everywhere."""

from __future__ import annotations

import base64
import json
import time
import types
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.core import auth
from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.core.errors import Unauthenticated
from tests.conftest import TEST_SECRET
from tests.support.payloads import CHAIN_INPUTS

CHAIN_PATHS = (INTERACTIONS_PATH, LEAD_SCORING_PATH, INSIGHTS_CHAT_PATH)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {"sub": "mallory", "tenant_id": "acme", "roles": ["admin"], "exp": int(time.time()) + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_TOKENS: dict[str, str | None] = {
    "missing": None,
    "expired": jwt.encode(_claims(exp=int(time.time()) - 3600), TEST_SECRET, algorithm="HS256"),
    "wrong_signature": jwt.encode(_claims(), "another-secret-of-sufficient-length-000000", algorithm="HS256"),
    "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
    "no_tenant": jwt.encode(_claims(tenant_id=None), TEST_SECRET, algorithm="HS256"),
    "no_exp": jwt.encode(_claims(exp=None), TEST_SECRET, algorithm="HS256"),
    "garbage": "not-a-jwt",
    "bad_tenant_chars": jwt.encode(_claims(tenant_id="acme:other"), TEST_SECRET, algorithm="HS256"),
    # Signed, but no float holds the expiry: an OverflowError once answered it 500.
    "exp_beyond_floats": jwt.encode(_claims(exp=10**400), TEST_SECRET, algorithm="HS256"),
    "exp_infinite": jwt.encode(_claims(exp=float("inf")), TEST_SECRET, algorithm="HS256"),  # PyJWT refuses it
    "exp_as_digits": jwt.encode(_claims(exp="9" * 400), TEST_SECRET, algorithm="HS256"),  # PyJWT's int() takes it
}


def chain_requests(path: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    body = {"input": CHAIN_INPUTS[path]}
    return [
        ("POST", f"{path}/invoke", body),
        ("POST", f"{path}/batch", {"inputs": [CHAIN_INPUTS[path]]}),
        ("POST", f"{path}/stream", body),
        ("POST", f"{path}/stream_log", body),
        ("POST", f"{path}/stream_events", body),
        ("POST", f"{path}/c/N4XyA/invoke", body),
        ("GET", f"{path}/input_schema", None),
        ("GET", f"{path}/output_schema", None),
        ("GET", f"{path}/config_schema", None),
        ("GET", f"{path}/playground/", None),
        ("GET", f"{path}/playground/assets/index.js", None),
    ]


ALL_REQUESTS = [request for path in CHAIN_PATHS for request in chain_requests(path)]


@pytest.mark.parametrize("token_kind", BAD_TOKENS)
def test_bad_tokens_get_401_on_every_chain_endpoint(
    anonymous: httpx.Client, token_kind: str
) -> None:
    token = BAD_TOKENS[token_kind]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, url, body in ALL_REQUESTS:
        response = anonymous.request(method, url, json=body, headers=headers)
        assert response.status_code == 401, (token_kind, method, url, response.text[:200])
        assert response.headers["www-authenticate"].startswith("Bearer"), url
        assert "detail" in response.json()


async def test_a_verified_token_is_checked_for_expiry_on_every_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified token is trusted for AUTH_VERIFIED_CACHE_S without its signature being
    checked again; it is still refused once past its expiry and the leeway, as PyJWT
    would refuse it, and a forged token (same claims, another signature) is still checked,
    and refused, while the real one is kept."""
    verifier = TokenVerifier(Settings(_env_file=None, auth_jwt_secret=TEST_SECRET, app_env="test", auth_leeway_s=30))
    decoded: list[str] = []
    decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda token, *args, **kwargs: decoded.append(token) or decode(token, *args, **kwargs))
    expires = int(time.time()) + 600
    token = jwt.encode(_claims(exp=expires), TEST_SECRET, algorithm="HS256")
    forged = jwt.encode(_claims(exp=expires), "another-secret-of-sufficient-length-000000", algorithm="HS256")

    for _ in range(3):
        assert (await verifier.verify(token)).tenant_id == "acme"
        with pytest.raises(Unauthenticated):
            await verifier.verify(forged)
    assert decoded.count(token) == 1 and decoded.count(forged) == 3

    # The kept claims' expiry, on the service's clock: within the leeway, then past it.
    clock = types.SimpleNamespace(time=lambda: expires + 29.5)
    monkeypatch.setattr(auth, "time", clock)
    assert (await verifier.verify(token)).tenant_id == "acme"
    clock.time = lambda: expires + 30.0
    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "expired" and decoded.count(token) == 1, "refused by the kept claims' exp"

    uncached = TokenVerifier(Settings(_env_file=None, auth_jwt_secret=TEST_SECRET, app_env="test",
                                      auth_verified_cache_s=0))
    fresh = jwt.encode(_claims(sub="another-user"), TEST_SECRET, algorithm="HS256")
    for _ in range(2):
        await uncached.verify(fresh)
    assert decoded.count(fresh) == 2, "AUTH_VERIFIED_CACHE_S=0 checks every time"


def test_bad_cookie_is_refused_too(anonymous: httpx.Client) -> None:
    anonymous.cookies.set("crm_session", BAD_TOKENS["wrong_signature"] or "")
    response = anonymous.get(f"{INTERACTIONS_PATH}/playground/")
    assert response.status_code == 401


def test_non_bearer_scheme_is_refused(anonymous: httpx.Client, mint: Callable[..., str]) -> None:
    response = anonymous.post(
        f"{LEAD_SCORING_PATH}/invoke",
        json={"input": CHAIN_INPUTS[LEAD_SCORING_PATH]},
        headers={"Authorization": f"Basic {mint()}"},
    )
    assert response.status_code == 401


@pytest.mark.parametrize("path", CHAIN_PATHS)
def test_valid_token_opens_every_endpoint(client: httpx.Client, path: str) -> None:
    for method, url, body in chain_requests(path):
        if "assets/" in url or "/c/" in url:
            continue  # asset names are build hashes; the config-hash variant is covered below
        response = client.request(method, url, json=body)
        assert response.status_code == 200, (url, response.text[:300])


def test_open_routes_need_no_token(anonymous: httpx.Client) -> None:
    assert anonymous.get("/health").json() == {"status": "ok"}
    assert anonymous.get("/ready").status_code == 200
    assert anonymous.get("/docs").status_code == 200
    spec = anonymous.get("/openapi.json").json()
    for path in CHAIN_PATHS:
        assert f"{path}/invoke" in spec["paths"]
    assert "/api/v1/ai/insights/documents" in spec["paths"]
