"""Sign-in cannot redirect off-site; production refuses configurations an attacker could use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.server import create_app
from tests.conftest import TEST_SECRET
from tests.support.live_server import live_server

OFF_SITE = ["//evil.example", "/%2F%2Fevil.example", "/%09/evil.example", "///evil.example",
            "/\\evil.example", "/%5C%5Cevil.example", "/\\/evil.example", "//evil.example/%2e%2e"]


@pytest.mark.parametrize("path", OFF_SITE)
def test_token_sign_in_only_redirects_within_this_origin(service_url: str, mint: Callable[..., str], path: str) -> None:
    # Sent raw, as an attacker's link would be: no client-side normalisation.
    with httpx.Client(base_url=service_url, timeout=10) as http:
        request = http.build_request("GET", f"{service_url}/")
        request.url = request.url.copy_with(raw_path=f"{path}?token={mint()}".encode())
        response = http.send(request, follow_redirects=False)
    if response.status_code != 303:
        assert response.status_code in (401, 403, 404), response.status_code
        return
    location = response.headers["location"]
    target = urlsplit(location)
    assert not target.scheme and not target.netloc, location
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert "\t" not in location and "\\" not in location


PRODUCTION_DATA_KEY = "a-production-master-key-kept-in-a-secret-store"


def production(tmp_path: Path, **values: object) -> Settings:
    values.setdefault("data_encryption_key", PRODUCTION_DATA_KEY)
    return Settings(_env_file=None, app_env="production", data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_production_refuses_to_start_without_a_data_encryption_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="DATA_ENCRYPTION_KEY"):
        production(tmp_path, auth_jwt_secret=TEST_SECRET, metrics_public=True, data_encryption_key=None)
    with pytest.raises(ValidationError, match="at least 32"):
        production(tmp_path, auth_jwt_secret=TEST_SECRET, metrics_public=True, data_encryption_key="short")


def test_production_jwks_needs_issuer_and_audience(tmp_path: Path) -> None:
    jwks = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
    for missing in ({}, {"auth_issuer": "https://securetoken.google.com/p"}, {"auth_audience": "p"}):
        with pytest.raises(ValidationError, match="AUTH_ISSUER and AUTH_AUDIENCE"):
            production(tmp_path, auth_jwks_url=jwks, metrics_token="m", **missing)
    production(tmp_path, auth_jwks_url=jwks, auth_issuer="https://securetoken.google.com/p",
               auth_audience="p", metrics_token="m")


def test_production_metrics_need_a_token_or_an_explicit_opt_out(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        production(tmp_path, auth_jwt_secret=TEST_SECRET)
    production(tmp_path, auth_jwt_secret=TEST_SECRET, metrics_public=True)
    production(tmp_path, auth_jwt_secret=TEST_SECRET, metrics_enabled=False)
    settings = production(tmp_path, auth_jwt_secret=TEST_SECRET, metrics_token="scrape-secret")
    with live_server(create_app(settings)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert scraped.status_code == 200 and "ai_workflow_queue_depth" in scraped.text
