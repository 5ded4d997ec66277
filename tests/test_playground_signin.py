"""`?token=` signs a browser in with an HttpOnly, SameSite=Strict cookie the playground uses."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from app.api.chains import INTERACTIONS_PATH
from tests.support.payloads import INTERACTION

PLAYGROUND = f"{INTERACTIONS_PATH}/playground/"


def test_token_in_url_sets_cookie_and_redirects_without_it(
    anonymous: httpx.Client, mint: Callable[..., str]
) -> None:
    token = mint()
    response = anonymous.get(PLAYGROUND, params={"token": token, "tab": "1"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"{PLAYGROUND}?tab=1"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"crm_session={token};")
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    assert "max-age=" in lowered


def test_the_access_log_keeps_no_sign_in_token(
    anonymous: httpx.Client, mint: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """The redirect drops the token from the URL, but uvicorn's access log wrote the
    request line with it (a security review): a bearer credential in plain text."""
    token = mint()
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel(logging.INFO)  # the test server logs warnings only
    access.addHandler(caplog.handler)
    try:
        assert anonymous.get(PLAYGROUND, params={"token": token, "tab": "1"}, follow_redirects=False).status_code == 303
    finally:
        access.removeHandler(caplog.handler)
        access.setLevel(level)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/playground/?token=[redacted]&tab=1" in line for line in lines), lines
    assert not any(token in line for line in lines)


def test_signed_in_browser_uses_page_assets_and_stream_log(
    anonymous: httpx.Client, mint: Callable[..., str]
) -> None:
    assert anonymous.get(PLAYGROUND).status_code == 401
    page = anonymous.get(PLAYGROUND, params={"token": mint()}, follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()
    asset = page.text.split('src="', 1)[1].split('"', 1)[0]
    assert anonymous.get(asset if asset.startswith("/") else PLAYGROUND + asset).status_code == 200
    with anonymous.stream(
        "POST", f"{INTERACTIONS_PATH}/stream_log", json={"input": INTERACTION}
    ) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "event: data" in body and "sentiment" in body and "event: end" in body


def test_invalid_url_token_is_refused_and_sets_nothing(anonymous: httpx.Client) -> None:
    response = anonymous.get(PLAYGROUND, params={"token": "forged"}, follow_redirects=False)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
