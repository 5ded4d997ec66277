"""JSON request bodies, checked once at the door: hostile JSON is a 422, never a 500.

Python's `json` accepts `NaN`, `Infinity` and `1e400` (as infinity) and lone UTF-16
surrogates, and recurses once per nesting level. Any of these reached LangServe or
FastAPI and surfaced as a 500 (a `RecursionError`, a response that cannot encode a
non-finite float, a 422 body that echoed an unencodable string). So every JSON body
is parsed here first (by `app.api.request_body`), and so is every message a WebSocket
client sends (`app.api.ws_session`): finite numbers only, valid Unicode only, at most
`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.exceptions import RequestValidationError

from chains.text import has_lone_surrogate

MAX_JSON_DEPTH = 32


class _Refused(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _invalid(message: str, kind: str = "json_invalid") -> RequestValidationError:
    return RequestValidationError([{"loc": ["body"], "msg": message, "type": kind}])


def _check_structure(value: Any) -> None:
    """Depth and Unicode, iteratively (a recursive walk would fail like `json` did)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                raise _invalid("strings must be valid Unicode (lone surrogate)", "string_unicode")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
        children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
        for key, child in children:
            if key is not None and has_lone_surrogate(key):
                raise _invalid("keys must be valid Unicode (lone surrogate)", "string_unicode")
            stack.append((child, depth + 1))


def parse_json(body: bytes | str, *, max_chars: int | None = None) -> Any:
    """A request body, or a WebSocket client's text message, checked as above. A body's
    size is bounded before it gets here (`app.api.request_body`); a WebSocket message
    only by the server's frame limit (uvicorn: 16 MiB), so its caller passes `max_chars`:
    an unauthenticated first message of 16 MiB of `0,` took 1.2 GB and the loop for
    seconds to parse and walk."""
    if max_chars is not None and len(body) > max_chars:
        raise _invalid(f"a message is at most {max_chars} characters", "message_too_large")
    try:
        value = json.loads(body, parse_float=_finite_float, parse_constant=_refuse_constant)
    except _Refused as refused:
        raise _invalid(str(refused), "finite_number") from None
    except RecursionError:
        raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_too_deep") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError alike
        raise _invalid(f"body must be UTF-8 JSON: {error}") from None
    _check_structure(value)
    return value
