"""Browser sign-in: `?token=<jwt>` on any page becomes an HttpOnly session cookie.

The LangServe playground cannot send an Authorization header (langserve#294), but its
fetches are same-origin, so a cookie reaches the page, its assets and `stream_log`.
The token leaves the URL at once (redirect), so it is not kept in history or logs.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.api.middleware import SelectiveMiddleware
from app.core.auth import TokenVerifier
from app.core.errors import Unauthenticated
from app.core.security_log import security_log_of


_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f\\]")


def same_origin_path(scope: Scope) -> str:
    """The request's own path as a redirect target that cannot leave this origin.

    Built from the raw (still percent-encoded) path, so `/%2F%2Fevil.example` stays a
    path; browsers read `//host`, `/\\host` and `/<tab>/host` as another host, so
    backslashes, whitespace and controls are encoded and leading slashes collapsed.
    """
    raw = scope.get("raw_path") or scope["path"].encode()
    path = _UNSAFE_IN_PATH.sub(lambda m: f"%{ord(m.group(0)):02X}", raw.decode("latin-1"))
    return "/" + path.lstrip("/")


class TokenSignInMiddleware(SelectiveMiddleware):
    """Turns `GET …?token=` into a SameSite=Strict session cookie and a clean redirect."""

    def __init__(self, app: ASGIApp, *, verifier: TokenVerifier, cookie_name: str) -> None:
        super().__init__(app)
        self.verifier = verifier
        self.cookie_name = cookie_name

    def handles(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] in ("GET", "HEAD")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        token = request.query_params.get("token")
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.verifier.verify(token)
        except Unauthenticated as error:
            security_log_of(request).token_refused(request, error)
            await error_response(error)(scope, receive, send)
            return
        remaining = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = same_origin_path(scope) + (f"?{urlencode(remaining)}" if remaining else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            self.cookie_name,
            token,
            max_age=max(0, int(principal.expires_at - time.time())),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        await response(scope, receive, send)
