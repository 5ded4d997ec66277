"""The live insights console: one static page, no build step, signed in by cookie."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.api.deps import CurrentPrincipal

router = APIRouter(tags=["console"])
PAGE = Path(__file__).resolve().parents[2] / "static" / "console.html"


@lru_cache(maxsize=1)
def _page() -> str:
    return PAGE.read_text()


@router.get("/console", response_class=HTMLResponse)
async def live_console(principal: CurrentPrincipal) -> HTMLResponse:
    """A rep's live view of a customer: insights over WebSocket and a streaming chat."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})
